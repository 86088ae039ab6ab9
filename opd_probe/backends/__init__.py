"""Model backends behind one small interface (see base.py). Imported lazily by name so `--help` stays fast."""

from __future__ import annotations

from ..errors import InputError

BACKENDS = ("hf",)


def load_backend_model(backend: str, spec, role: str):
    """Load ``spec`` (a ModelSpec) with the named backend. ``role`` is "student" or "teacher" (for messages)."""
    if backend == "hf":
        from .hf import HFModel

        return HFModel.load(spec, role=role)
    raise InputError(
        f"unknown backend {backend!r}",
        fix=f"use one of: {', '.join(BACKENDS)}",
    )
