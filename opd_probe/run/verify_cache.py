"""What a `verify` run reads back instead of recomputing: with --resume the finished parts in OUT/arms/, and the
control arm's cache, keyed by everything the control depends on (the student, the prompt files, the loop settings;
not the teacher), so one control serves every teacher (docs/verify.md "The control arm")."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import __version__


def model_fingerprint(path: str) -> dict:
    """Identity of a model for the control cache: a local folder's files (name, size, mtime), or the hub id."""
    from ..zoo import resolve

    p = Path(resolve(path)).expanduser()
    if not p.is_dir():
        return {"id": path}
    return {"files": sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in p.iterdir() if f.is_file())}


CONTROL_KEYS = ("limit", "eval_limit", "retain_limit", "steps", "lr", "weight_decay", "warmup_steps", "grad_clip",
                "batch_prompts", "samples", "top_k", "loss", "temperature", "max_new_tokens", "eval_every",
                "eval_samples", "eval_temperature", "control_advantage", "chat_template", "dtype", "cold_start",
                "cold_start_epochs", "cold_start_lr", "cold_start_target")


def control_key(cfg) -> str:
    """Hash of what the control arm depends on: the student, the prompt files, the loop settings (not the seed: one
    file per seed). With --cold-start the control starts from the teacher's cold start, so the teacher joins it."""
    from .stages import file_sha256

    doc = {"student": model_fingerprint(cfg.student), "version": __version__,
           "files": {k: file_sha256(getattr(cfg, k)) if getattr(cfg, k) else None
                     for k in ("prompts", "eval_prompts", "retain_prompts")},
           "settings": {k: getattr(cfg, k) for k in CONTROL_KEYS}}
    if cfg.cold_start:
        doc["teacher"] = model_fingerprint(cfg.teacher)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def control_cache_dir(cfg) -> Path:
    """--control-cache DIR, else `.opd-probe-control/` beside --out (its parent), one folder per key."""
    root = Path(cfg.control_cache) if cfg.control_cache else Path(cfg.out).expanduser().resolve().parent / \
        ".opd-probe-control"
    return root / control_key(cfg)



def stored(path: Path, compute, resume: bool, progress, also: Path | None = None) -> dict:
    """Read a finished part back (``resume``: from ``path``; the control cache: from ``also``), else compute it and
    write it atomically (to both)."""
    from ..rundir import atomic_write_text, dumps

    for p in ([path] if resume else []) + ([also] if also else []):
        if p.exists():
            progress.log(f"reusing {p}")
            doc = json.loads(p.read_text())
            if also and not path.exists():
                atomic_write_text(path, dumps(doc))
            return doc
    doc = compute()
    atomic_write_text(path, dumps(doc))
    if also:
        atomic_write_text(also, dumps(doc))
    return doc

