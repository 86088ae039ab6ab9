"""Pure: compare's measured lint of a pair, on the probe's own rollouts (docs/lint.md). Three measurements of how
the teacher is being scored, not of what it teaches:

- renderer bias: the teacher's mean log-prob per response token under the student's rendering of the prompt minus
  under its own chat template's (nats/token), with a bootstrap CI over prompts. A teacher scored under a rendering
  it was not trained with was biased by +0.287 nats/token (thinking-machines-lab/tinker-cookbook#796).
- stop-token agreement: the teacher's probability of the student's stop token at the states where the student
  stopped. A teacher that never rewards stopping makes OPD responses run long (modelscope/ms-swift#9526).
- scoring determinism: the teacher scores one small batch twice, reversed and one sequence at a time; the largest
  difference of its log-probs (SkyRL PR #2256; bf16 kernels depend on the batch).

No models, no torch: arrays in, frozen records out. run/lint.py runs the teacher's extra passes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from .metrics import bootstrap_weights, group_sums, pooled_estimate
from .thresholds import Thresholds

# Warning lines. Not measured: provisional. |bias| of 0.1 nats/token is about a third of the one reported harmful
# bias (0.287, tinker-cookbook#796); no run maps a bias to an OPD outcome.
RENDERER_BIAS_WARN = 0.1
# Not measured: provisional. A teacher probability of the stop token under 0.1 gives the stop an OPD reward of
# log q - log p < log 0.1 - log p (about -2 nats where the student was confident); the verdict's own lines are
# thresholds.stop_low_prob / stop_low_share.
STOP_LOW_PROB = 0.1
# The warning reads the verdict's default lines (thresholds.py: stop_low_share, stop_min_states; provisional).
STOP_LOW_SHARE = Thresholds().stop_low_share
STOP_MIN_STATES = Thresholds().stop_min_states
# Not measured: provisional (nats). The largest change of a teacher log-prob between two scorings of the same
# tokens that is read as noise: float32 on CPU differs by ~1e-6 (tests/test_lint.py).
DETERMINISM_WARN = 0.01


def _nan_none(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


@dataclass(frozen=True)
class RendererBias:
    """``status``: "measured"; "identical" (the teacher's own template renders these prompts to the student's ids:
    the bias is exactly 0, no pass was run); "unavailable" (``note`` says why: no teacher template, a rendering
    the template refuses, a reused run without prompts)."""

    status: str
    mean: float | None = None  # nats/token: student's rendering minus the teacher's own
    ci_low: float | None = None
    ci_high: float | None = None
    n_states: int = 0
    n_prompts: int = 0
    source: str = ""  # which rollouts: all (--template student,teacher) or the first few prompts
    student_rendering_logprob: float | None = None  # the teacher's mean log-prob/token under each rendering
    teacher_rendering_logprob: float | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RendererBias":
        return cls(**d)


@dataclass(frozen=True)
class StopAgreement:
    """The teacher's probability of the token the student stopped on, at the states where it stopped (the rollouts
    that finished with "stop"; the token is the sampled one there, so no extra pass)."""

    n_stops: int
    teacher_prob_mean: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    low_share: float | None = None  # share of the stopping states where the teacher's probability < low_prob
    low_prob: float = STOP_LOW_PROB
    student_prob_mean: float | None = None  # the student's own probability there, for comparison

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StopAgreement":
        return cls(**d)


@dataclass(frozen=True)
class Determinism:
    """The largest |Δ log-prob| (sampled-token and top-k log-probs) between scorings of the same sequences:
    ``repeat`` the same batch twice; ``composition`` the batch against itself reversed and one sequence at a time."""

    status: str  # "measured" | "unavailable"
    sequences: int = 0
    positions: int = 0
    repeat_max_abs_diff: float | None = None
    composition_max_abs_diff: float | None = None
    compositions: tuple[str, ...] = ()
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "compositions": list(self.compositions)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Determinism":
        return cls(**{**d, "compositions": tuple(d.get("compositions", ()))})


@dataclass(frozen=True)
class Lint:
    """A pair's measured lint (results.json pairs[].lint); ``seconds``: the teacher's extra passes."""

    renderer_bias: RendererBias
    stop: StopAgreement
    determinism: Determinism
    seconds: float = 0.0
    thresholds: dict[str, float] = field(default_factory=lambda: {
        "renderer_bias_warn": RENDERER_BIAS_WARN, "stop_low_prob": STOP_LOW_PROB,
        "stop_low_share": STOP_LOW_SHARE, "determinism_warn": DETERMINISM_WARN})

    def to_dict(self) -> dict[str, Any]:
        return {"renderer_bias": self.renderer_bias.to_dict(), "stop": self.stop.to_dict(),
                "determinism": self.determinism.to_dict(), "seconds": self.seconds,
                "thresholds": dict(self.thresholds)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Lint":
        return cls(renderer_bias=RendererBias.from_dict(d["renderer_bias"]), stop=StopAgreement.from_dict(d["stop"]),
                   determinism=Determinism.from_dict(d["determinism"]), seconds=float(d.get("seconds", 0.0)),
                   thresholds=dict(d.get("thresholds", {})))


# ------------------------------------------------------------------------------------------------ measurements
def renderer_bias(student_rendering_N: np.ndarray, teacher_rendering_N: np.ndarray, prompt_N: np.ndarray,
                  n_prompts: int, source: str, n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> RendererBias:
    """Paired difference of the teacher's sampled-token log-probs at the same response states, the prompt rendered
    the student's way and the teacher's own; token-pooled, bootstrap CI over prompts (metrics.pooled_estimate)."""
    s = np.asarray(student_rendering_N, dtype=np.float64)
    t = np.asarray(teacher_rendering_N, dtype=np.float64)
    prompt_N = np.asarray(prompt_N, dtype=np.int64)
    weights = bootstrap_weights(n_prompts, n_boot, seed)
    est = pooled_estimate(*group_sums(s - t, prompt_N, n_prompts), weights, level)
    return RendererBias("measured", _nan_none(est.mean), _nan_none(est.ci_low), _nan_none(est.ci_high), est.n,
                        int(len(np.unique(prompt_N))), source, _nan_none(float(s.mean()) if s.size else None),
                        _nan_none(float(t.mean()) if t.size else None))


def stop_agreement(teacher_logprob_S: np.ndarray, student_logprob_S: np.ndarray, prompt_S: np.ndarray,
                   n_prompts: int, low_prob: float = STOP_LOW_PROB, n_boot: int = 1000, seed: int = 0,
                   level: float = 0.95) -> StopAgreement:
    """From the log-probs of the stop token at the S stopping states (one per rollout that stopped)."""
    t = np.exp(np.asarray(teacher_logprob_S, dtype=np.float64))
    s = np.exp(np.asarray(student_logprob_S, dtype=np.float64))
    if t.size == 0:
        return StopAgreement(0, low_prob=low_prob)
    est = pooled_estimate(*group_sums(t, np.asarray(prompt_S, dtype=np.int64), n_prompts),
                          bootstrap_weights(n_prompts, n_boot, seed), level)
    return StopAgreement(int(t.size), float(t.mean()), _nan_none(est.ci_low), _nan_none(est.ci_high),
                         float((t < low_prob).mean()), low_prob, float(s.mean()))


def max_abs_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """The largest |a - b| over pairs of same-shaped arrays (0.0 for none)."""
    return max((float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) if np.size(x) else 0.0
                for x, y in zip(a, b)), default=0.0)


# ------------------------------------------------------------------------------------------------ reading
def lint_warning(lint: Lint) -> str | None:
    """One line for the pair's warnings when something is off (None when all is well)."""
    off = []
    rb, st, de = lint.renderer_bias, lint.stop, lint.determinism
    if rb.status == "measured" and rb.mean is not None and abs(rb.mean) > RENDERER_BIAS_WARN:
        ci = f" [{rb.ci_low:+.3f}, {rb.ci_high:+.3f}]" if rb.ci_low is not None and rb.ci_high is not None else ""
        off.append(f"renderer bias {rb.mean:+.3f} nats/token{ci} (student's rendering minus the teacher's own, "
                   f"{rb.source}; |bias| > {RENDERER_BIAS_WARN:g}): the teacher is scored under a rendering it was "
                   "not trained with; measure both: --template student,teacher")
    if st.n_stops >= STOP_MIN_STATES and st.low_share is not None and st.low_share > STOP_LOW_SHARE:
        off.append(f"stop-token agreement: the teacher gives the student's stop token p < {st.low_prob:g} at "
                   f"{st.low_share:.0%} of {st.n_stops} stopping states (mean p {st.teacher_prob_mean:.3f}; the "
                   f"student's own {st.student_prob_mean:.3f}): it does not reward stopping, OPD responses may run "
                   "long (ms-swift#9526)")
    worst = max((x for x in (de.repeat_max_abs_diff, de.composition_max_abs_diff) if x is not None), default=None)
    if de.status == "measured" and worst is not None and worst > DETERMINISM_WARN:
        off.append(f"scoring determinism: the teacher's log-probs change by up to {worst:.3g} nats between scorings "
                   f"of the same tokens (same batch twice {de.repeat_max_abs_diff:.3g}, other compositions "
                   f"{de.composition_max_abs_diff:.3g}; > {DETERMINISM_WARN:g}): metrics near a threshold carry "
                   "that noise; --dtype float32 removes most of it")
    return "lint: " + "; ".join(off) if off else None
