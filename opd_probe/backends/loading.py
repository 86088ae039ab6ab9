"""Finding and reading a model without its weights: path resolution (local folder, `zoo:NAME`, hub id), config,
tokenizer, context length, stop tokens, the vocabulary hash. No torch import: `check` and the fail-fast checks use
this before any weight is loaded; both backends load through it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import ModelLoadError
from ..zoo import resolve
from .base import ModelSpec


def _looks_like_local_path(path: str) -> bool:
    return path.startswith((".", "/", "~")) or path.count("/") > 1 or os.sep in path and path.count(os.sep) > 1


def vocab_hash(vocab: dict[str, int]) -> str:
    blob = json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def resolve_model_path(spec: ModelSpec, role: str) -> str:
    """A local folder (expanded) or a hub id that can be reached; a clear error otherwise. Shared by backends."""
    path = resolve(spec.path)
    if Path(path).expanduser().exists():
        return str(Path(path).expanduser())
    if _looks_like_local_path(path):
        raise ModelLoadError(
            f"{role} model path {path!r} does not exist",
            fix="pass an existing model folder (with config.json and weights) or a hub id like org/name",
        )
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        raise ModelLoadError(
            f"{role} model {path!r} is not a local folder, and the hub is offline (HF_HUB_OFFLINE=1)",
            fix="download it where there is network (huggingface-cli download) and pass the local folder",
        )
    _check_hub_reachable(path, role)
    return path


def load_config(path: str, spec: ModelSpec, role: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=spec.trust_remote_code, revision=spec.revision)
    except Exception as e:  # noqa: BLE001 - transformers raises many types here
        raise ModelLoadError(
            f"could not load the {role} model config from {spec.path!r}: {first_line(e)}",
            fix="check the path or hub id (a model folder needs config.json); custom architectures need "
            "--trust-remote-code",
        ) from e


def load_tokenizer(path: str, spec: ModelSpec, role: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code, revision=spec.revision)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"could not load the tokenizer of the {role} model {spec.path!r}: {first_line(e)}",
                             fix="the model folder must contain its tokenizer files") from e


def context_length_of(config) -> int | None:
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def eos_ids_of(tokenizer, generation_config) -> list[int]:
    ids = set()
    for v in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(v, int):
            ids.add(v)
        elif isinstance(v, (list, tuple)):
            ids.update(int(x) for x in v)
    return sorted(ids)


def _check_hub_reachable(model_id: str, role: str, timeout: float = 3.0) -> None:
    """Fail in seconds, not after a minute of download retries, when the hub cannot be reached."""
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint).hostname or "huggingface.co"
    port = urlparse(endpoint).port or 443
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise ModelLoadError(
            f"{role} model {model_id!r} is not a local folder and the hub ({host}) cannot be reached: {e}",
            fix="pass a local model folder, or download the model where there is network; on offline machines "
            "set HF_HUB_OFFLINE=1",
        ) from e


def first_line(e: Exception) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__
