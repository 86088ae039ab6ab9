"""Pure: project the sampling and teacher-scoring cost of a planned OPD run from the probe's measured throughput.

No models, no IO, no torch. The probe measured, on this hardware and backend, how many response tokens per
second the student samples and how many (prompt + response) tokens per second each teacher scores. A planned run
of S steps x B sequences samples S*B responses and has every teacher score each of them once (the reference
trainer's per-step teacher pass; arXiv 2604.13016 App. A.1). Response length is the big unknown, so the projection
is a range: "low" uses the probe's mean response length (capped at the planned maximum), "high" assumes every
response runs to the planned maximum.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# A projection whose probe rollouts mostly hit the probe's own length cap says so: its "low" end is then a
# lower bound on the real mean response length, not an estimate of it.
TRUNCATION_NOTE_SHARE = 0.10


@dataclass(frozen=True)
class Plan:
    """The planned OPD run: ``steps`` optimizer steps of ``batch`` sequences (prompts x samples per prompt, e.g.
    64 x 4 = 256 in the paper's recipe), responses capped at ``max_tokens``."""

    steps: int
    batch: int
    max_tokens: int

    def __post_init__(self):
        for name in ("steps", "batch", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"plan {name} must be at least 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls(steps=d["steps"], batch=d["batch"], max_tokens=d["max_tokens"])


@dataclass(frozen=True)
class Range:
    """A projected quantity as a range: ``low`` at the probe's mean response length, ``high`` at the planned cap
    (None where the rate it depends on was not measured)."""

    low: float | None
    high: float | None

    def map(self, f) -> "Range":
        return Range(*(None if v is None else f(v) for v in (self.low, self.high)))

    def to_dict(self) -> dict:
        return {"low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, d: dict) -> "Range":
        return cls(low=d["low"], high=d["high"])


@dataclass(frozen=True)
class Cost:
    """Time of one part of the run (sampling, or one teacher's scoring) at the rate the probe measured."""

    tokens_per_second: float | None
    seconds: Range

    @property
    def hours(self) -> Range:
        return self.seconds.map(lambda s: s / 3600.0)

    def to_dict(self) -> dict:
        return {"tokens_per_second": self.tokens_per_second, "seconds": self.seconds.to_dict(),
                "hours": self.hours.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Cost":
        return cls(tokens_per_second=d["tokens_per_second"], seconds=Range.from_dict(d["seconds"]))


@dataclass(frozen=True)
class Projection:
    """The cost projection of a planned run (results.json "plan")."""

    plan: Plan
    sequences: int
    response_tokens: Range  # response tokens sampled
    scored_tokens: Range  # prompt + response tokens each teacher scores
    sampling: Cost
    teachers: dict[str, Cost]
    device: str
    backend: str
    assumptions: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"plan": self.plan.to_dict(), "sequences": self.sequences,
                "response_tokens": self.response_tokens.to_dict(), "scored_tokens": self.scored_tokens.to_dict(),
                "sampling": self.sampling.to_dict(), "teachers": {n: c.to_dict() for n, c in self.teachers.items()},
                "device": self.device, "backend": self.backend, "assumptions": list(self.assumptions)}

    @classmethod
    def from_dict(cls, d: dict) -> "Projection":
        return cls(plan=Plan.from_dict(d["plan"]), sequences=d["sequences"],
                   response_tokens=Range.from_dict(d["response_tokens"]),
                   scored_tokens=Range.from_dict(d["scored_tokens"]), sampling=Cost.from_dict(d["sampling"]),
                   teachers={n: Cost.from_dict(c) for n, c in d["teachers"].items()}, device=d["device"],
                   backend=d["backend"], assumptions=tuple(d["assumptions"]))


def _rate(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and x > 0 else None


def project(
    plan: Plan,
    *,
    response_length_mean: float,
    prompt_length_mean: float | None,
    probe_max_new_tokens: int,
    truncated_share: float,
    sampling_tokens_per_second: float | None,
    scoring_tokens_per_second: dict[str, float | None],
    device: str,
    backend: str = "hf",
    notes: tuple[str, ...] = (),
) -> Projection:
    """The cost projection.

    ``response_length_mean`` / ``prompt_length_mean``: tokens per rollout in the probe. ``truncated_share``: share
    of probe rollouts that hit ``probe_max_new_tokens``. ``sampling_tokens_per_second``: response tokens sampled
    per second. ``scoring_tokens_per_second``: teacher -> (prompt + response) tokens scored per second. A rate
    that was not measured (None) gives None for the times that depend on it.
    """
    sequences = plan.steps * plan.batch
    mean_len = min(float(response_length_mean), float(plan.max_tokens))
    resp = Range(sequences * mean_len, float(sequences * plan.max_tokens))
    scored = resp.map(lambda v: v + sequences * float(prompt_length_mean or 0.0))

    def cost(rate, tokens: Range) -> Cost:
        r = _rate(rate)
        return Cost(r, tokens.map(lambda v: v / r) if r else Range(None, None))

    s_rate = _rate(sampling_tokens_per_second)
    teachers = {name: cost(rate, scored) for name, rate in scoring_tokens_per_second.items()}

    assumptions = [
        f"{sequences} sequences = {plan.steps} steps x {plan.batch} sequences per step; every teacher scores each "
        "sampled sequence once (prompt + response)",
        f"low: responses as long as the probe's mean ({response_length_mean:.1f} tokens"
        + (f", capped at --plan-max-tokens {plan.max_tokens}" if response_length_mean > plan.max_tokens else "")
        + f"); high: every response runs to --plan-max-tokens {plan.max_tokens}",
        f"prompt length: the probe's mean, {prompt_length_mean:.1f} tokens" if prompt_length_mean is not None else
        "prompt length was not recorded (results from an older opd-probe): scored tokens count responses only",
        f"same hardware and backend as the probe ({device}, {backend}), at the probe's measured rates; batch size, "
        "parallelism, KV-cache and attention cost growing with length are not modelled (a faster engine, e.g. vLLM "
        "for sampling, or more devices, divide these times)",
        "the student's own training forward/backward and the optimizer step are not included",
    ]
    if truncated_share > TRUNCATION_NOTE_SHARE:
        assumptions.append(
            f"{truncated_share:.0%} of the probe's rollouts hit its --max-new-tokens {probe_max_new_tokens}: its "
            "mean response length is a lower bound, so the low end underestimates")
    if s_rate is None:
        assumptions.append("sampling throughput was not measured in this run (reused or fully resumed rollouts): "
                           "sampling time is unknown")
    for name, rate in scoring_tokens_per_second.items():
        if _rate(rate) is None:
            assumptions.append(f"teacher {name}: scoring throughput was not measured in this run (resumed from "
                               "saved scores): its time is unknown")
    assumptions += list(notes)
    return Projection(plan=plan, sequences=sequences, response_tokens=resp, scored_tokens=scored,
                      sampling=cost(s_rate, resp), teachers=teachers, device=device, backend=backend,
                      assumptions=tuple(assumptions))


def project_results(plan: Plan, results) -> Projection:
    """``project`` with the measurements a ProbeResults (or its dict) recorded."""
    d = results if isinstance(results, dict) else results.to_dict()
    ro, env, cfg = d["rollouts"], d.get("environment") or {}, d.get("config") or {}
    finish = ro.get("finish_reasons") or {}
    count = max(int(ro.get("count") or 0), 1)
    gpus = env.get("gpus")
    device = ", ".join(gpus) if gpus else ("CUDA" if env.get("cuda_available") else "CPU")
    device += f", torch threads {env['torch_threads']}" if env.get("torch_threads") and not gpus else ""
    return project(
        plan,
        response_length_mean=float(ro.get("response_length_mean") or 0.0),
        prompt_length_mean=ro.get("prompt_length_mean"),
        probe_max_new_tokens=int(ro.get("max_new_tokens") or cfg.get("max_new_tokens") or 0),
        truncated_share=finish.get("length", 0) / count,
        sampling_tokens_per_second=ro.get("sampling_tokens_per_second"),
        scoring_tokens_per_second={p["teacher"]: (p.get("timings") or {}).get("scoring_tokens_per_second")
                                   for p in d["pairs"]},
        device=device,
        backend=str(cfg.get("backend") or "hf"),
        notes=(f"sampling rate as measured by the run whose rollouts were reused ({ro['sampling_measured_in']})",)
        if ro.get("sampling_measured_in") else (),
    )
