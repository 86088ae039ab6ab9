"""Copies of a tiny model folder that differ from it in exactly one respect (config, tokenizer, template, generation
config or weight file), for the preflight checks, which read files and never weights. No torch import."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def _edit_json(path: Path, changes: dict) -> None:
    d = json.loads(path.read_text()) if path.exists() else {}
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    path.write_text(json.dumps(d, indent=2))


def variant(src: Path, dst: Path, *, config: dict | None = None, tokenizer_config: dict | None = None,
            generation_config: dict | None = None, chat_template: str | None = None,
            tokenizer_from: Path | None = None, weights: str | bytes | None = None) -> Path:
    """Copy the model folder ``src`` to ``dst`` and change one thing. ``config`` / ``tokenizer_config`` /
    ``generation_config``: keys to set (None: delete the key). ``chat_template``: the new template ("" deletes it).
    ``tokenizer_from``: take the tokenizer files of another folder. ``weights``: "missing" (no weight file),
    "truncated" (the safetensors header without the tensor data), or bytes to write as model.safetensors."""
    dst = Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    if config:
        _edit_json(dst / "config.json", config)
    if tokenizer_from is not None:
        for name in TOKENIZER_FILES:
            (dst / name).unlink(missing_ok=True)
            if (Path(tokenizer_from) / name).exists():
                shutil.copyfile(Path(tokenizer_from) / name, dst / name)
    if tokenizer_config:
        _edit_json(dst / "tokenizer_config.json", tokenizer_config)
    if generation_config:
        _edit_json(dst / "generation_config.json", generation_config)
    if chat_template is not None:
        (dst / "chat_template.jinja").unlink(missing_ok=True)
        _edit_json(dst / "tokenizer_config.json", {"chat_template": None})
        if chat_template:
            (dst / "chat_template.jinja").write_text(chat_template)
    f = dst / "model.safetensors"
    if weights == "missing":
        f.unlink()
    elif weights == "truncated":
        data = f.read_bytes()
        n = int.from_bytes(data[:8], "little")
        f.write_bytes(data[: 8 + n])
    elif isinstance(weights, bytes):
        f.write_bytes(weights)
    return dst
