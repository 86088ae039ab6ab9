"""Pure: teacher-aligned prompt selection (arXiv 2604.13016 §5.2, App. C.3-C.4). No models, no IO, no torch.

A candidate pool is scored per prompt (the mean of each per-state metric over the prompt's own rollouts); the
most teacher-aligned prompts are kept, and a fixed share of the kept set is drawn from the rest of the pool,
because "teacher-aligned prompts alone" lowered the student's entropy in the paper, which recommends mixing them
"with prompts outside the teacher's post-training data to preserve policy entropy" without giving a ratio
(docs/recipe.md says how the default was chosen).

Shapes: N = states (response positions of every rollout, concatenated), P = prompts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .metrics import group_sums

# Per-prompt scores written for every pool prompt (and added to each kept prompt's record).
SCORE_METRICS = (
    "overlap_ratio",
    "overlap_mass_student",
    "overlap_mass_teacher",
    "topk_reverse_kl",
    "entropy_gap",
    "student_entropy",
    "teacher_entropy",
)

# --rank-by name -> (metric, higher is more aligned).
# mass is the default: in the paper's prompt-content experiment (§5.2) the teacher-aligned prompts had a LOWER
# overlap ratio but a "substantially higher" student overlap mass, and trained better; ranking by the ratio would
# have picked the wrong set there. kl ranks by the smallest step-0 top-k reverse KL (the teacher already agrees).
RANK_BY: dict[str, tuple[str, bool]] = {
    "mass": ("overlap_mass_student", True),
    "overlap": ("overlap_ratio", True),
    "kl": ("topk_reverse_kl", False),
}
DEFAULT_RANK_BY = "mass"
# Share of the kept set drawn from outside the aligned top. The paper gives no ratio (arXiv 2604.13016 §5.2):
# a default, not a measured optimum; docs/recipe.md gives the reasoning.
DEFAULT_OOD_FRACTION = 0.3


def prompt_means(states: dict[str, np.ndarray], prompt_N: np.ndarray, n_prompts: int) -> dict[str, np.ndarray]:
    """Mean of each per-state metric over each prompt's states (all its rollouts pooled), shape (P,) each, NaN
    for a prompt without a finite value; plus ``n_states`` (P,) int."""
    prompt_N = np.asarray(prompt_N, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for name in SCORE_METRICS:
        sums, counts = group_sums(np.asarray(states[name], dtype=np.float64), prompt_N, n_prompts)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    out["n_states"] = np.bincount(prompt_N, minlength=n_prompts)
    return out


def split_counts(keep: int, ood_fraction: float) -> tuple[int, int]:
    """(aligned, ood) counts of a kept set of ``keep`` prompts: ood = round-half-up(keep * ood_fraction), exactly.

    The fraction is read as the decimal the user typed (0.3 -> 3/10), so 10 x 0.3 is 3, not 3.0000000000000004.
    """
    if keep < 0:
        raise ValueError("keep must be >= 0")
    if not 0.0 <= ood_fraction <= 1.0 or math.isnan(ood_fraction):
        raise ValueError("ood_fraction must be in [0, 1]")
    ood = math.floor(Fraction(repr(float(ood_fraction))) * keep + Fraction(1, 2))
    return keep - ood, ood


@dataclass(frozen=True)
class Selection:
    """Pool positions (0-based, ascending) of the kept prompts, by why they were kept."""

    aligned: tuple[int, ...]  # the n_aligned best-ranked eligible prompts
    ood: tuple[int, ...]  # drawn uniformly (seeded) from the eligible prompts not in ``aligned``
    rank: dict[int, int]  # pool position -> 1-based alignment rank among eligible prompts

    @property
    def kept(self) -> tuple[int, ...]:
        return tuple(sorted(self.aligned + self.ood))


def rank_order(score_P: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Eligible positions (finite score), most aligned first; ties keep pool order (deterministic)."""
    score_P = np.asarray(score_P, dtype=np.float64)
    eligible = np.flatnonzero(np.isfinite(score_P))
    key = -score_P[eligible] if higher_is_better else score_P[eligible]
    return eligible[np.argsort(key, kind="stable")]


def select(score_P: np.ndarray, keep: int, ood_fraction: float, seed: int, higher_is_better: bool = True) -> Selection:
    """Keep ``keep`` prompts: the ``keep - n_ood`` most aligned by ``score_P``, plus ``n_ood`` drawn without
    replacement from the remaining eligible prompts (numpy ``default_rng(seed)``). Prompts with a NaN score
    (nothing scored: skipped, or no state) are never kept. Raises ValueError when fewer than ``keep`` are eligible.
    """
    n_aligned, n_ood = split_counts(keep, ood_fraction)
    order = rank_order(score_P, higher_is_better)
    if keep > len(order):
        raise ValueError(f"keep={keep} but only {len(order)} prompts are eligible")
    aligned = order[:n_aligned]
    rest = np.sort(order[n_aligned:])
    rng = np.random.default_rng(seed)
    ood = rng.choice(rest, size=n_ood, replace=False) if n_ood else np.empty(0, dtype=np.int64)
    return Selection(
        aligned=tuple(sorted(int(i) for i in aligned)),
        ood=tuple(sorted(int(i) for i in ood)),
        rank={int(i): r for r, i in enumerate(order, 1)},
    )


def summarize(scores: dict[str, np.ndarray], groups: dict[str, np.ndarray | list[int] | tuple[int, ...]]) -> dict:
    """Per group of pool positions: prompt count and the mean over its prompts of each per-prompt score (every
    prompt weighs the same, whatever its response length; NaN scores are left out). Returns
    {group: {"prompts": n, metric: mean or None}}."""
    out = {}
    for name, idx in groups.items():
        idx = np.asarray(idx, dtype=np.int64)
        row: dict = {"prompts": int(len(idx))}
        for m in SCORE_METRICS:
            v = np.asarray(scores[m], dtype=np.float64)[idx]
            v = v[np.isfinite(v)]
            row[m] = float(v.mean()) if len(v) else None
        out[name] = row
    return out
