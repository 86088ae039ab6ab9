"""Pure: the verdict of a cross-tokenizer pair (a teacher with another tokenizer; docs/cross-tokenizer.md).

The same-tokenizer rules (verdict.py) that read only answers (knowledge novelty) apply unchanged; the pattern rule
reads the exact chunk-level support instead of the top-k one (which needs the teacher's log-probs of the student's
own token ids); the entropy gap decides nothing (the entropies are over different token inventories), nor do the
overlap metrics (approximate, over shared strings only).

NOT VALIDATED: no cross-tokenizer pair has a measured OPD outcome yet. The lines below are conventions, marked so in
every verdict: CROSS_UNSUPPORTED_NOGO borrows the same-tokenizer no-go line for the unsupported share
(thresholds.py) for its chunk-level analogue; ALIGNED_LOW and SHARED_MASS_LOW only say when the position-level
metrics see little of the pair.
"""

from __future__ import annotations

from typing import Collection

from .lint import StopAgreement
from .thresholds import Thresholds
from .types import ContinuationGain, Reason, Verdict
from .verdict import SEVERITY, decide

CROSS_UNSUPPORTED_NOGO = 0.05  # provisional, not measured on cross-tokenizer pairs (see the module docstring)
ALIGNED_LOW = 0.5  # provisional: under half the student's positions comparable one by one
SHARED_MASS_LOW = 0.5  # provisional: under half the student's top-k mass on strings the teacher has
# read by the same-tokenizer rules but not meaningful across tokenizers (crossmetrics.HOW says why)
NOT_READ = ("entropy_gap", "entropy_gap_signed", "overlap_ratio", "overlap_mass_student", "overlap_mass_teacher")

RECOMMEND_TRAINER = ("train with a trainer that aligns the two tokenizations (TRL's GOLD trainer with ULD and span "
                     "merging: opd-probe verify --print-recipe trl prints its settings), or pick a teacher from the "
                     "student's model family")


def decide_cross(teacher: str, pooled: dict[str, float], th: Thresholds, *,
                 continuation: Collection[ContinuationGain] | None = None,
                 stop: StopAgreement | None = None) -> Verdict:
    """Verdict for one cross-tokenizer teacher. ``pooled``: metric -> pooled mean (crossmetrics: every metric of
    metrics.METRICS, NaN where undefined, and crossmetrics.CROSS_METRICS)."""
    base = decide(teacher, {k: v for k, v in pooled.items() if k not in NOT_READ}, th,
                  continuation=list(continuation or ()), stop=stop)
    reasons, recs = list(base.reasons), list(base.recommendations)
    unsupported = pooled.get("chunk_unsupported")
    if unsupported is not None and unsupported > CROSS_UNSUPPORTED_NOGO:
        reasons.append(Reason(
            "pattern-mismatch", "no-go", "chunk_unsupported", unsupported, CROSS_UNSUPPORTED_NOGO, ">",
            "in many chunks of the student's own text the teacher gives it under 5% of the student's probability: "
            "chunk-level OPD pushes the student off its own way of writing (threshold not validated)"))
        recs.append(f"cold start: SFT the student on ~{th.cold_start_rollouts} teacher rollouts (their text, in the "
                    "student's tokens) first, then re-probe")
    aligned, shared = pooled.get("aligned"), pooled.get("shared_mass_student")
    if aligned is not None and aligned < ALIGNED_LOW:
        reasons.append(Reason(
            "tokenizer-alignment", "info", "aligned", aligned, ALIGNED_LOW, "<",
            "under half the student's positions sit where the teacher's tokenization also has a boundary: "
            "position-level metrics (overlap, entropy) see only those; chunk-level ones see everything"))
    if shared is not None and shared < SHARED_MASS_LOW:
        reasons.append(Reason(
            "tokenizer-alignment", "info", "shared_mass_student", shared, SHARED_MASS_LOW, "<",
            "most of the student's top-k mass is on strings the teacher's vocabulary lacks: a trainer matching "
            "exact shared tokens would discard that signal; one that merges spans keeps it"))
    reasons.append(Reason(
        "cross-tokenizer", "info", "aligned", None, None, "!=",
        "the teacher has another tokenizer: it scored its own tokenization of the student's text; the "
        "cross-tokenizer rules are not validated by the benchmark yet (docs/cross-tokenizer.md)"))
    recs.append(RECOMMEND_TRAINER)
    status = max((r.severity for r in reasons), key=SEVERITY.__getitem__, default="go")
    status = "go" if status == "info" else status
    return Verdict(teacher, status, tuple(reasons), tuple(dict.fromkeys(recs)))
