"""`verify` as a controlled experiment: paired comparisons, seed-variance intervals, the decision, the power estimate.

Pure numpy on per-problem scores; no models, no torch, no IO (docs/verify.md "Statistics").

Notation: an arm (teacher, control) is run with S OPD seeds and evaluated on the same P eval problems; its score
on problem p after seed s is a_sp in [0, 1] (greedy pass@1 is 0 or 1; sampled avg@n is the share of n samples that
are correct). The untouched student (the baseline) is evaluated once: b_p. Every comparison is paired problem by
problem: D_sp = a_sp − b_sp (arm vs arm, seed s against seed s: both arms see the same prompts in the same order
with the same sampling seeds) or D_sp = a_sp − b_p (arm vs baseline).

The estimate is the grand mean d̄ = mean_sp D_sp. Its standard error (``paired_seed_interval``):

    SE² = SE_seed² + SE_problem²
    SE_seed²    = var_s(d_s) / S,   d_s = mean_p D_sp   (how much the gain moves from one OPD seed to the next)
    SE_problem² = var_p(d_p) / P,   d_p = mean_s D_sp   (how much it depends on which problems were drawn)

(sample variances, ddof = 1). Under the two-way random-effects model D_sp = μ + α_s + β_p + ε_sp,
Var(d̄) = σ_α²/S + σ_β²/P + σ_ε²/(SP), while E[SE_seed²] = σ_α²/S + σ_ε²/(SP) and
E[SE_problem²] = σ_β²/P + σ_ε²/(SP): the sum counts the interaction term σ_ε²/(SP) twice, so the interval is
conservative (wider than exact) — the safe side for a gate. The 95% interval is d̄ ± t_{0.975, ν} · SE with the
Welch–Satterthwaite degrees of freedom ν = SE⁴ / (SE_seed⁴/(S−1) + SE_problem⁴/(P−1)).
With one seed (S = 1) the seed term cannot be estimated: SE = SE_problem, ν = P − 1 (the paired t-interval over
problems), and the interval says seed variance was not measured.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

Z975 = 1.959963984540054  # standard normal 0.975 quantile
Z80 = 0.8416212335729143  # standard normal 0.80 quantile (80% power)
T975_SMALL_DF = (12.706204736174704, 4.302652729749464, 3.182446305284263, 2.7764451051977987)  # t_0.975, df 1..4

# Minimum evidence before any decisive verdict. Not measured: floors chosen so that a handful of steps or problems
# can never decide (with 3 steps a student barely moves; with 10 problems one problem is 10 points of accuracy).
MIN_STEPS = 20
MIN_PROBLEMS = 20

ADDS_SIGNAL = "teacher adds signal"
NO_BETTER = "no better than the control"
HARMFUL = "harmful"
INCONCLUSIVE = "inconclusive"
GAIN_UNATTRIBUTED = "gain, not attributed (no control arm)"
NO_GAIN = "no gain over the untouched student"
VERDICTS = (ADDS_SIGNAL, NO_BETTER, HARMFUL, INCONCLUSIVE, GAIN_UNATTRIBUTED, NO_GAIN)


def t_quantile_975(df: float) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (real df ≥ 1; inf → the normal's).

    Below df = 5 the tabled values of df = 1..4 (df = 1: tan(0.475π) = 12.706), a non-integer df rounded down (a
    wider, conservative interval); from df = 5 on the Cornish–Fisher expansion of Abramowitz & Stegun 26.7.5 in
    1/df, within 3e-4 of the tables (tests/test_experiment.py).
    """
    if not df >= 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if math.isinf(df):
        return Z975
    if df < 5:
        return T975_SMALL_DF[int(df) - 1]
    z, v = Z975, float(df)
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    return z + g1 / v + g2 / v ** 2 + g3 / v ** 3 + g4 / v ** 4


@dataclass(frozen=True)
class Interval:
    """A paired mean difference with its 95% interval and the parts of its standard error."""

    mean: float
    low: float
    high: float
    se: float
    se_seed: float | None  # None with one seed (not measured)
    se_problem: float
    df: float | None  # None: infinite (both parts zero)
    seeds: int
    problems: int
    per_seed: tuple[float, ...]  # d_s, the paired mean difference of each seed
    method: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Interval":
        return cls(**{**d, "per_seed": tuple(d["per_seed"])})


def paired_seed_interval(a_SP, b) -> Interval:
    """95% interval of mean(a − b) over seeds and problems (module docstring). ``a_SP``: (S, P) scores of an arm;
    ``b``: (S, P) scores of another arm, paired seed by seed, or (P,) scores of the baseline."""
    a = np.atleast_2d(np.asarray(a_SP, dtype=np.float64))
    b = np.asarray(b, dtype=np.float64)
    if b.ndim == 1:
        b = np.broadcast_to(b, a.shape)
    if a.shape != b.shape:
        raise ValueError(f"paired scores must have the same shape: {a.shape} vs {b.shape}")
    S, P = a.shape
    if P < 2:
        raise ValueError("a paired interval needs at least 2 problems")
    D = a - b
    mean = float(D.mean())
    d_s, d_p = D.mean(axis=1), D.mean(axis=0)
    var_p = float(d_p.var(ddof=1)) / P
    if S >= 2:
        var_s = float(d_s.var(ddof=1)) / S
        denom = var_s ** 2 / (S - 1) + var_p ** 2 / (P - 1)
        method = (f"paired over {P} problems + seed variance over {S} seeds (conservative sum; "
                  "Welch–Satterthwaite t)")
    else:
        var_s = None
        denom = var_p ** 2 / (P - 1)
        method = f"paired t over {P} problems (1 seed: seed variance not measured)"
    var = var_p + (var_s or 0.0)
    se = math.sqrt(var)
    df = var ** 2 / denom if denom > 0 else None
    half = t_quantile_975(df if df is not None else math.inf) * se
    return Interval(mean=mean, low=mean - half, high=mean + half, se=se,
                    se_seed=None if var_s is None else math.sqrt(var_s), se_problem=math.sqrt(var_p), df=df,
                    seeds=S, problems=P, per_seed=tuple(float(x) for x in d_s), method=method)


@dataclass(frozen=True)
class Power:
    """How much more evidence would make the observed difference decisive at 80% power (two-sided 5%).

    With the observed mean difference d̄ held fixed, a verdict needs |d̄ − bar| ≥ (z_0.975 + z_0.80) · SE', i.e. a
    standard error SE' ≤ h = |d̄ − bar| / 2.80. Problems scale the problem part (SE_problem² ∝ 1/P) and seeds the
    seed part (SE_seed² ∝ 1/S), so
        P' = P · SE_problem² / (h² − SE_seed²)     (seeds fixed; None when SE_seed ≥ h: problems alone cannot)
        S' = S · SE_seed² / (h² − SE_problem²)     (problems fixed; None when SE_problem ≥ h, or with one seed)
    A normal approximation (no t correction), so it is a planning figure, not a guarantee.
    """

    target_se: float | None  # h; None when d̄ equals the bar (no amount of evidence decides a zero margin)
    problems_needed: int | None
    seeds_needed: int | None
    note: str

    def to_dict(self) -> dict:
        return asdict(self)


def power_estimate(iv: Interval, bar: float = 0.0) -> Power:
    margin = abs(iv.mean - bar)
    if margin < 1e-12:
        return Power(None, None, None, f"the observed difference equals the bar ({bar:+.3f}): more evidence "
                                       "would only confirm that they are indistinguishable")
    h = margin / (Z975 + Z80)
    sp2, ss2 = iv.se_problem ** 2, (iv.se_seed or 0.0) ** 2
    problems = math.ceil(iv.problems * sp2 / (h * h - ss2)) if h * h > ss2 else None
    seeds = (math.ceil(iv.seeds * ss2 / (h * h - sp2)) if iv.se_seed is not None and h * h > sp2 else None)
    if problems is not None:
        problems = max(problems, iv.problems)
    if seeds is not None:
        seeds = max(seeds, iv.seeds)
    parts = []
    if problems is not None:
        parts.append(f"about {problems} eval problems (now {iv.problems}) at {iv.seeds} seed(s)")
    else:
        parts.append("more eval problems alone cannot decide it (the seed-to-seed spread is too large)")
    if iv.se_seed is None:
        parts.append("run --seeds 2 or more to measure seed variance")
    elif seeds is not None:
        parts.append(f"or about {seeds} seeds (now {iv.seeds}) on these problems")
    return Power(h, problems, seeds, f"to decide a difference of {iv.mean:+.3f} against {bar:+.3f} at 80% power: "
                 + "; ".join(parts))


@dataclass(frozen=True)
class Evidence:
    steps: int
    problems: int
    seeds: int

    def shortfalls(self) -> list[str]:
        out = []
        if self.steps < MIN_STEPS:
            out.append(f"{self.steps} OPD steps < {MIN_STEPS} (minimum evidence; raise --steps)")
        if self.problems < MIN_PROBLEMS:
            out.append(f"{self.problems} eval problems < {MIN_PROBLEMS} (minimum evidence; add --eval-prompts)")
        return out


@dataclass(frozen=True)
class Decision:
    verdict: str
    passed: bool
    reasons: tuple[str, ...]
    bar: float
    power: dict | None  # Power.to_dict() when inconclusive

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Decision":
        return cls(**{**d, "reasons": tuple(d["reasons"])})


def decide(vs_control: Interval | None, vs_baseline: Interval | None, retention: Interval | None,
           evidence: Evidence, min_gain: float = 0.0, retain_tolerance: float = 0.0) -> Decision:
    """The verdict from intervals, never from a trend (docs/verify.md "Decision").

    - inconclusive: no target accuracy (no eval answers), or below the minimum evidence (MIN_STEPS, MIN_PROBLEMS)
    - harmful: the teacher arm is below the untouched student (upper bound of teacher − baseline < 0), or it lost
      retention beyond the interval (upper bound of the retention change < −retain_tolerance)
    - teacher adds signal (the only pass): lower bound of teacher − control > bar = max(0, min_gain)
    - no better than the control: upper bound of teacher − control ≤ bar
    - without a control arm the same two rules on teacher − baseline give "gain, not attributed" (which does not
      pass: a gain without a control cannot be credited to the teacher) and "no gain"
    - anything else: inconclusive, with the power estimate of the deciding comparison
    """
    bar = max(0.0, float(min_gain))
    if vs_baseline is None:
        return Decision(INCONCLUSIVE, False, ("no eval prompts with answers: accuracy is the outcome, and without it "
                                              "nothing is decided (trends are not evidence)",), bar, None)
    deciding = vs_control if vs_control is not None else vs_baseline
    short = evidence.shortfalls()
    if short:
        return Decision(INCONCLUSIVE, False, tuple(short), bar, power_estimate(deciding, bar).to_dict())
    reasons = []
    if vs_baseline.high < 0:
        reasons.append(f"teacher − baseline {vs_baseline.mean:+.3f} [{vs_baseline.low:+.3f}, {vs_baseline.high:+.3f}] "
                       "is below zero")
    if retention is not None and retention.high < -retain_tolerance:
        reasons.append(f"retention change {retention.mean:+.3f} [{retention.low:+.3f}, {retention.high:+.3f}] "
                       f"is a loss beyond its interval (tolerance {retain_tolerance:g})")
    if reasons:
        return Decision(HARMFUL, False, tuple(reasons), bar, None)
    name = "teacher − control" if vs_control is not None else "teacher − baseline"
    text = f"{name} {deciding.mean:+.3f} [{deciding.low:+.3f}, {deciding.high:+.3f}]"
    retained = "" if retention is None else f"; retention {retention.mean:+.3f} [{retention.low:+.3f}, " \
                                            f"{retention.high:+.3f}] shows no loss beyond its interval"
    if deciding.low > bar:
        verdict = ADDS_SIGNAL if vs_control is not None else GAIN_UNATTRIBUTED
        return Decision(verdict, vs_control is not None, (f"{text}: lower bound above {bar:g}{retained}",), bar, None)
    if deciding.high <= bar:
        verdict = NO_BETTER if vs_control is not None else NO_GAIN
        return Decision(verdict, False, (f"{text}: upper bound at or below {bar:g}",), bar, None)
    return Decision(INCONCLUSIVE, False, (f"{text} straddles {bar:g}",), bar, power_estimate(deciding, bar).to_dict())


def gap_recovery(arm_mean: float, baseline_mean: float, teacher_mean: float) -> float | None:
    """(acc_after − acc_before) / (acc_teacher − acc_before) (arXiv 2604.13016 §3.2); None when the teacher is no
    better than the student (the ratio is then meaningless)."""
    gap = teacher_mean - baseline_mean
    return (arm_mean - baseline_mean) / gap if gap > 1e-9 else None
