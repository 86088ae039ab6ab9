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


def folder_eos_ids(tokenizer, path: str, revision: str | None = None) -> list[int]:
    """The stop ids of a model folder's tokenizer and its generation_config.json, when it has one."""
    from transformers import GenerationConfig

    try:
        gc = GenerationConfig.from_pretrained(path, revision=revision)
    except Exception:  # noqa: BLE001 - no generation_config.json
        gc = None
    return eos_ids_of(tokenizer, gc)


class TokenizerMethods:
    """render and decode through ``self.tokenizer``, as every backend does."""

    tokenizer: object

    def render(self, prompt, use_chat_template: bool) -> list[int]:
        from ..prompts import render_prompt_ids

        return render_prompt_ids(self.tokenizer, prompt, use_chat_template=use_chat_template)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


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


# ------------------------------------------------------------------------------------------------ facts, no weights
# What `opd-probe check` and the fail-fast checks read: config.json as written, the weights' safetensors headers
# (shapes and dtypes, never the tensors), the tokenizer's special tokens and its chat template's end of turn.

SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                           "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "U16": 2, "U32": 4, "U64": 8}
_HEADER_LIMIT = 100 * 2**20  # the safetensors format caps the JSON header at 100 MB


def read_config_dict(path: str, spec: ModelSpec, role: str) -> dict:
    """config.json as written (no transformers: a config with unknown or missing model_type still reads). A hub id
    goes through AutoConfig (which downloads the config only)."""
    folder = Path(path)
    if not folder.is_dir():
        return load_config(path, spec, role).to_dict()
    f = folder / "config.json"
    if not f.is_file():
        raise ModelLoadError(f"{role} model folder {path} has no config.json",
                             fix="pass the folder a model was saved to (save_pretrained writes config.json)")
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{f} is not valid JSON: {e}",
                             fix="restore config.json from the model's source (it may be truncated)") from e
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{f} holds a {type(cfg).__name__}, not a JSON object",
                             fix="restore config.json from the model's source")
    return cfg


def text_config_dict(cfg: dict) -> dict:
    """The language model's part of a config (multimodal configs nest it under text_config)."""
    inner = cfg.get("text_config")
    return {**cfg, **inner} if isinstance(inner, dict) else cfg


def safetensors_header(file: Path) -> dict:
    """The JSON header of one .safetensors file (tensor name -> dtype, shape, offsets): the first 8 + n bytes only.
    Raises ValueError when the file is not a complete safetensors file."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{size} bytes: too short for a safetensors header")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > _HEADER_LIMIT or 8 + n > size:
            raise ValueError(f"header length {n} does not fit the file ({size} bytes)")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"unreadable header ({e})") from e
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
               and "data_offsets" in v), default=0)
    if 8 + n + end > size:
        raise ValueError(f"truncated: the header describes {8 + n + end} bytes, the file has {size}")
    return header


def weights_summary(path: str) -> dict:
    """Parameter count and bytes of a local model folder's weights, from the safetensors headers alone.

    Returns {"files", "parameters", "bytes", "dtypes", "source"}; "problem" (and no counts) when the weights are
    missing or a file is corrupt; {"source": None} for a hub id (nothing local to read)."""
    folder = Path(path)
    if not folder.is_dir():
        return {"source": None}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        other = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf", ".h5"))
        if other:
            return {"source": "other", "files": other}
        return {"source": None, "files": [], "problem": "no weight files (*.safetensors or *.bin)"}
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            wanted = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError) as e:
            return {"source": "safetensors", "files": [f.name for f in files],
                    "problem": f"{index.name} is not a valid index ({first_line(e)})"}
        missing = sorted(wanted - {f.name for f in files})
        if missing:
            return {"source": "safetensors", "files": [f.name for f in files],
                    "problem": f"shards named in {index.name} are missing: {', '.join(missing[:3])}"}
        files = [f for f in files if f.name in wanted]
    params, nbytes, dtypes = 0, 0, {}
    for f in files:
        try:
            header = safetensors_header(f)
        except (OSError, ValueError) as e:
            return {"source": "safetensors", "files": [p.name for p in files], "problem": f"{f.name}: {e}"}
        for name, t in header.items():
            if name == "__metadata__" or not isinstance(t, dict):
                continue
            n = 1
            for d in t.get("shape", []):
                n *= int(d)
            params += n
            nbytes += n * SAFETENSORS_DTYPE_BYTES.get(t.get("dtype"), 4)
            dtypes[t.get("dtype")] = dtypes.get(t.get("dtype"), 0) + n
    return {"source": "safetensors", "files": [f.name for f in files], "parameters": params, "bytes": nbytes,
            "dtypes": dtypes}


def special_tokens_of(tokenizer) -> dict:
    """bos / eos / pad as (token, id); None where the tokenizer has none."""
    out = {}
    for name in ("bos", "eos", "pad"):
        tok, tid = getattr(tokenizer, f"{name}_token", None), getattr(tokenizer, f"{name}_token_id", None)
        out[name] = (str(tok), int(tid)) if tok is not None and isinstance(tid, int) else None
    return out


_TURN_PROBE = "OPDPROBEREPLY"


def turn_end_of(tokenizer) -> tuple[str, int] | None:
    """The token the chat template writes right after an assistant message (its end of turn), from a rendering of
    a two-turn conversation: ``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama 3. None when the tokenizer has no
    chat template, the template writes nothing after the reply, or it cannot render the conversation."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _TURN_PROBE}], tokenize=False)
    except Exception:  # noqa: BLE001 - a template that rejects this conversation has no end of turn we can read
        return None
    i = text.rfind(_TURN_PROBE)
    tail = text[i + len(_TURN_PROBE):] if i >= 0 else ""
    if not tail.strip():
        return None
    ids = tokenizer.encode(tail.lstrip(" "), add_special_tokens=False)
    if not ids:
        return None
    return tokenizer.convert_ids_to_tokens(ids[0]), int(ids[0])
