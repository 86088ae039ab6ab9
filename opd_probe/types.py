"""Frozen dataclasses that cross stage boundaries. Serialised explicitly; no torch import here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .costs import Projection
from .lint import Lint

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ProbePrompt:
    """One probe prompt. Exactly one of ``prompt`` (plain text) or ``messages`` (chat list) is set.

    ``messages`` is a tuple of (role, content) pairs. ``answer`` is the reference answer, when known.
    ``index`` is the 0-based position in the prompt file; ``id`` is the user's id or ``str(index)``.
    """

    id: str
    index: int
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None
    answer: str | None = None

    def as_messages(self) -> list[dict[str, str]]:
        if self.messages is not None:
            return [{"role": r, "content": c} for r, c in self.messages]
        return [{"role": "user", "content": self.prompt or ""}]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "index": self.index,
            "prompt": self.prompt,
            "messages": [list(m) for m in self.messages] if self.messages is not None else None,
            "answer": self.answer,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProbePrompt":
        msgs = d.get("messages")
        return cls(
            id=d["id"],
            index=d["index"],
            prompt=d.get("prompt"),
            messages=tuple((m[0], m[1]) for m in msgs) if msgs is not None else None,
            answer=d.get("answer"),
        )


@dataclass(frozen=True)
class Rollout:
    """One student sample for one prompt. ``rollout_id = prompt_index * samples + sample_index``."""

    rollout_id: int
    prompt_index: int
    prompt_id: str
    sample_index: int
    prompt_token_ids: tuple[int, ...]
    response_token_ids: tuple[int, ...]
    response_text: str
    finish_reason: str  # "stop" | "length"

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["prompt_token_ids"] = list(self.prompt_token_ids)
        d["response_token_ids"] = list(self.response_token_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Rollout":
        return cls(
            rollout_id=int(d["rollout_id"]),
            prompt_index=int(d["prompt_index"]),
            prompt_id=str(d["prompt_id"]),
            sample_index=int(d["sample_index"]),
            prompt_token_ids=tuple(int(x) for x in d["prompt_token_ids"]),
            response_token_ids=tuple(int(x) for x in d["response_token_ids"]),
            response_text=d["response_text"],
            finish_reason=d["finish_reason"],
        )


@dataclass(frozen=True)
class Reason:
    """One rule that fired, with the numbers that made it fire (verdict.py)."""

    code: str  # pattern-mismatch | low-novelty | weak-signal | horizon-decay | template-mismatch | stop-disagreement
    severity: str  # no-go | caution | info
    metric: str
    value: float | None
    threshold: float | None
    direction: str  # "<" (value below threshold trips it), "<=" (at or below), ">" or "!=" (info)
    message: str
    approximate: bool = False  # the value is an estimate (vLLM scoring; pairs[].approximate says how)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("code", "severity", "metric", "value", "threshold", "direction", "message")}
        return {**d, "approximate": True} if self.approximate else d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Reason":
        return cls(**d)


@dataclass(frozen=True)
class Verdict:
    teacher: str
    status: str  # go | caution | no-go
    reasons: tuple[Reason, ...]
    recommendations: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher, "status": self.status, "reasons": [r.to_dict() for r in self.reasons],
                "recommendations": list(self.recommendations)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Verdict":
        return cls(teacher=d["teacher"], status=d["status"], reasons=tuple(Reason.from_dict(r) for r in d["reasons"]),
                   recommendations=tuple(d["recommendations"]))


@dataclass(frozen=True)
class ContinuationGain:
    """Teacher vs student accuracy continuing the student's own prefixes cut at ``depth`` (run/evidence.py)."""

    depth: int
    n: int
    teacher_accuracy: float
    student_accuracy: float
    gain: float  # teacher_accuracy - student_accuracy
    se: float  # standard error of the paired difference

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ContinuationGain":
        return cls(**d)


@dataclass(frozen=True)
class Novelty:
    """Knowledge-novelty evidence of one pair; each part only when it was asked for."""

    continuation: tuple[ContinuationGain, ...] | None = None  # --continuation-depths
    grad_norm: float | None = None  # --grad-norm: step-0 gradient norm of the OPD top-k loss

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.continuation is not None:
            d["continuation"] = [c.to_dict() for c in self.continuation]
        if self.grad_norm is not None:
            d["grad_norm"] = self.grad_norm
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Novelty":
        cont = d.get("continuation")
        return cls(continuation=tuple(ContinuationGain.from_dict(c) for c in cont) if cont is not None else None,
                   grad_norm=d.get("grad_norm"))


@dataclass(frozen=True)
class PairResult:
    """Metrics of one (student, teacher) pair at the student's states."""

    teacher: str  # the teacher argument as given
    slug: str  # folder name under scores/
    model: dict[str, Any]  # provenance (backend info)
    pooled: dict[str, Any]  # metric -> metrics.Estimate
    depth: tuple[dict[str, Any], ...]  # [{"start", "end", "n_states", "metrics": {metric: Estimate}}]
    per_prompt: dict[str, dict[str, float | None]]  # prompt id -> metric -> mean (None: no state)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    verdict: Verdict | None = None  # set by verdict.decide once every pair is scored
    novelty: Novelty = field(default_factory=Novelty)
    # compare --template: the student's vs the teacher's own chat template at the same states (templates.py)
    templates: dict[str, Any] = field(default_factory=dict)
    # metric -> {"exact_fraction": share of its states computed exactly, "how": the estimate used elsewhere};
    # empty when every value is exact (the transformers scorer). See docs/vllm.md.
    approximate: dict[str, Any] = field(default_factory=dict)
    # compare's measured lint: renderer bias, stop-token agreement, scoring determinism (lint.py, docs/lint.md)
    lint: Lint | None = None
    # a teacher with another tokenizer, scored through text alignment (run/cross.py, docs/cross-tokenizer.md): the
    # alignment's figures and how each metric is obtained; empty for a teacher that shares the student's tokenizer
    alignment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "teacher": self.teacher,
            "slug": self.slug,
            "model": self.model,
            "pooled": {k: v.to_dict() for k, v in self.pooled.items()},
            "depth": [
                {**{k: v for k, v in b.items() if k != "metrics"},
                 "metrics": {m: e.to_dict() for m, e in b["metrics"].items()}}
                for b in self.depth
            ],
            "per_prompt": self.per_prompt,
            "timings": self.timings,
            "warnings": list(self.warnings),
            "verdict": self.verdict.to_dict() if self.verdict is not None else None,
            "novelty": self.novelty.to_dict(),
            "templates": self.templates,
            "approximate": self.approximate,
            "lint": self.lint.to_dict() if self.lint is not None else None,
            "alignment": self.alignment,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PairResult":
        from .metrics import Estimate

        return cls(
            teacher=d["teacher"],
            slug=d["slug"],
            model=d["model"],
            pooled={k: Estimate.from_dict(v) for k, v in d["pooled"].items()},
            depth=tuple(
                {**{k: v for k, v in b.items() if k != "metrics"},
                 "metrics": {m: Estimate.from_dict(e) for m, e in b["metrics"].items()}}
                for b in d["depth"]
            ),
            per_prompt=d["per_prompt"],
            timings=d.get("timings", {}),
            warnings=tuple(d.get("warnings", ())),
            verdict=Verdict.from_dict(d["verdict"]) if d.get("verdict") else None,
            novelty=Novelty.from_dict(d.get("novelty") or {}),
            templates=d.get("templates", {}),
            approximate=d.get("approximate", {}),
            lint=Lint.from_dict(d["lint"]) if d.get("lint") else None,
            alignment=d.get("alignment") or {},
        )


@dataclass(frozen=True)
class ProbeResults:
    """Everything one `compare` run concluded, with the provenance to reproduce it (results.json)."""

    tool_version: str
    created_at: str
    config: dict[str, Any]
    environment: dict[str, Any]
    student: dict[str, Any]
    prompts: dict[str, Any]  # source, sha256, count
    rollouts: dict[str, Any]  # counts, lengths, finish reasons, throughput
    pairs: tuple[PairResult, ...]
    ranking: tuple[str, ...]  # teacher names, best first
    timings: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    thresholds: dict[str, Any] = field(default_factory=dict)  # the values that decided the verdicts
    distinguishability: dict[str, Any] | None = None  # teacher x teacher overlap and KL at student states
    gate: dict[str, Any] | None = None  # {"fail_on", "passed", "tripped_by"} when a gate was asked for
    plan: Projection | None = None  # cost projection of a planned OPD run (costs.project), with --plan-steps
    schema_version: int = SCHEMA_VERSION

    def pair(self, teacher: str) -> PairResult:
        for p in self.pairs:
            if p.teacher == teacher:
                return p
        raise KeyError(teacher)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "tool_version": self.tool_version,
            "created_at": self.created_at,
            "config": self.config,
            "environment": self.environment,
            "student": self.student,
            "prompts": self.prompts,
            "rollouts": self.rollouts,
            "pairs": [p.to_dict() for p in self.pairs],
            "ranking": list(self.ranking),
            "timings": self.timings,
            "warnings": list(self.warnings),
            "thresholds": self.thresholds,
            "distinguishability": self.distinguishability,
            "gate": self.gate,
            "plan": self.plan.to_dict() if self.plan is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProbeResults":
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"unsupported results schema_version {d.get('schema_version')!r}")
        return cls(
            schema_version=d["schema_version"],
            tool_version=d["tool_version"],
            created_at=d["created_at"],
            config=d["config"],
            environment=d["environment"],
            student=d["student"],
            prompts=d["prompts"],
            rollouts=d["rollouts"],
            pairs=tuple(PairResult.from_dict(p) for p in d["pairs"]),
            ranking=tuple(d["ranking"]),
            timings=d.get("timings", {}),
            warnings=tuple(d.get("warnings", ())),
            thresholds=d.get("thresholds", {}),
            distinguishability=d.get("distinguishability"),
            gate=d.get("gate"),
            plan=Projection.from_dict(d["plan"]) if d.get("plan") else None,
        )
