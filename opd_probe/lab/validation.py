"""The validation benchmark's statistics and its pre-registration guard (docs/validation.md). Pure numpy.

A predictor is only as good as its margin over trivial ones, so every measure here is computed the same way for
the verdict and for the baselines, on the same pairs:

- ``balanced_accuracy``: GO vs (CAUTION or NO-GO) against works / fails; the mean of the true-positive and the
  true-negative rate, so "always warn" and "always go" both score 0.5 whatever the share of working pairs.
- ``auroc``: how well a continuous score orders working above failing pairs (Mann-Whitney; ties count 1/2).
- ``spearman``: rank correlation with average ranks for ties (within one student: ranking vs realised gain).
- ``top1_regret``: realised gain of the best candidate minus that of the one ranked first.
- ``bootstrap_ci``: percentile interval of any of these, resampling pairs (or whole students, ``clusters``).
- ``fit_threshold``: the one-metric rule fitted on the dev split, for the single-metric baselines.

Pre-registration: predictions carry ``rules_hash`` (the verdict rules' source and the thresholds that decided
them); ``check_rules_hash`` refuses to score held-out outcomes against predictions made under other rules.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError


def _bool(x) -> np.ndarray:
    return np.asarray(x, dtype=bool)


def balanced_accuracy(predicted_works: Sequence[bool], works: Sequence[bool]) -> float:
    """Mean of the true-positive rate (GO on pairs that work) and the true-negative rate (a warning on pairs that
    fail). NaN when either class is absent (the measure is then undefined, not 1 or 0)."""
    p, w = _bool(predicted_works), _bool(works)
    if p.shape != w.shape:
        raise ValueError("predictions and outcomes differ in length")
    if w.all() or not w.any():
        return float("nan")
    return float((p[w].mean() + (~p[~w]).mean()) / 2)


def auroc(score: Sequence[float], works: Sequence[bool]) -> float:
    """P(score of a working pair > score of a failing pair), ties counted 1/2. NaN when a class is absent."""
    s, w = np.asarray(score, dtype=float), _bool(works)
    pos, neg = s[w], s[~w]
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def rankdata(x: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties given the average of the ranks they span (as scipy.stats.rankdata 'average')."""
    a = np.asarray(x, dtype=float)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(1, len(a) + 1)
    for v in np.unique(a):
        tied = a == v
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of the average ranks. NaN with fewer than 2 items or when one side is constant."""
    rx, ry = rankdata(x), rankdata(y)
    if len(rx) != len(ry):
        raise ValueError("x and y differ in length")
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((dx ** 2).sum() * (dy ** 2).sum())
    return float((dx * dy).sum() / denom) if len(rx) > 1 and denom > 0 else float("nan")


def top1_regret(realised_gain: dict[str, float], ranking: Sequence[str]) -> float:
    """Realised gain of the best candidate minus that of the candidate ranked first (0 = the pick was best)."""
    if not ranking:
        raise ValueError("empty ranking")
    return float(max(realised_gain.values()) - realised_gain[ranking[0]])


def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, *, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95, clusters: Sequence | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(indices)`` over ``n`` items.

    ``stat`` takes an index array (items drawn with replacement) and returns a number; resamples where it is
    undefined (NaN, e.g. one class drawn only) are dropped. With ``clusters`` (one label per item, e.g. the
    student), whole clusters are drawn, since pairs of one student are not independent.
    """
    rng = np.random.default_rng(seed)
    if clusters is None:
        groups = [np.array([i]) for i in range(n)]
    else:
        labels = list(clusters)
        if len(labels) != n:
            raise ValueError("one cluster label per item")
        groups = [np.flatnonzero([lab == c for lab in labels]) for c in dict.fromkeys(labels)]
    values = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(groups), len(groups))
        v = stat(np.concatenate([groups[g] for g in pick]))
        if np.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion hits / n (95% at z = 1.96): unlike a bootstrap it does not collapse
    to [1, 1] at n/n, which matters for the handful of pairs a family has."""
    if n == 0:
        return float("nan"), float("nan")
    p, z2 = hits / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * (p * (1 - p) / n + z2 / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def sign_test(wins: int, losses: int) -> float:
    """One-sided exact sign test: P(at least ``wins`` of the discordant pairs favour A | no difference)."""
    from math import comb

    n = wins + losses
    return sum(comb(n, i) for i in range(wins, n + 1)) / 2 ** n if n else 1.0


def fit_threshold(score: Sequence[float], works: Sequence[bool]) -> tuple[float, bool]:
    """The one-metric rule "works iff score >= t" (or "<= t" when lower is better) with the highest balanced
    accuracy on these (dev) pairs. Returns (t, higher_is_better); ties go to the middle candidate threshold."""
    s, w = np.asarray(score, dtype=float), _bool(works)
    cands = np.unique(s[np.isfinite(s)])
    if not len(cands):
        raise ValueError("no finite score to fit a threshold on")
    if w.all() or not w.any():
        raise ValueError("fitting a threshold needs working and failing pairs")
    best: list[tuple[float, bool]] = []
    best_acc = -1.0
    for higher in (True, False):
        for t in cands:
            acc = balanced_accuracy(s >= t if higher else s <= t, w)
            if acc > best_acc + 1e-12:
                best, best_acc = [(float(t), higher)], acc
            elif abs(acc - best_acc) <= 1e-12:
                best.append((float(t), higher))
    return best[len(best) // 2]


def rules_hash(thresholds: dict, sources: Sequence[str | Path] | None = None) -> str:
    """sha256 of the verdict rules' source files and the threshold values: what a prediction was made with."""
    here = Path(__file__).resolve().parents[1]
    files = sources or [here / "verdict.py", here / "thresholds.py"]
    h = hashlib.sha256(json.dumps(thresholds, sort_keys=True).encode())
    for f in files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def current_rules_hash() -> str:
    """The hash of the rules in force: verdict.py, thresholds.py and the default thresholds' values."""
    from ..thresholds import Thresholds

    return rules_hash(Thresholds().to_dict())


def check_rules_hash(predictions: dict, current: str) -> None:
    """Refuse to score held-out outcomes against predictions that other rules made (pre-registration)."""
    made_with = predictions.get("rules_hash")
    if made_with != current:
        raise InputError(
            f"the held-out predictions were made with rules {made_with!r}, but the rules now hash to {current!r}",
            fix="score them with the rules they were made with (git checkout the commit that froze them); if the "
                "rules had to change after seeing outcomes, say so and make a new held-out set")
