"""Pure: metrics + novelty evidence + thresholds -> a verdict per teacher, with reasons and recommendations.

Status is the most severe reason: ``no-go`` > ``caution`` > ``go``. Every reason names its metric, value,
threshold and direction, so a reader can check it against results.json. Rules (docs/metrics.md, "Verdict"):

- pattern-mismatch (paper §3.1, §5): the unsupported share (states where the teacher rules out the student's own
  likely tokens) above its no-go line, or an entropy gap above its caution line. The overlap ratio and masses are
  reported but decide nothing: near-equal tokens make them a matter of chance (docs/validation.md).
- low-novelty (paper §3.2-3.3, §6.1): with reference answers, a teacher clearly less accurate than the student
  from the prompt (continuation depth 0, by more than 2 standard errors) is no-go (reverse-distillation risk); a
  depth-0 gain under min_answer_gain is a caution (fitted on the validation benchmark's dev family); one above it
  but within noise is info; without a clear depth-0 gain, a continuation gain at or under the minimum at every
  probed depth > 0 is a caution.
- weak-signal (app. B.2): a tiny step-0 top-k reverse KL. A caution only: a small loss alone wrongly predicts
  "no gain" for a teacher that generalised further (prototype finding), so it asks for answer-based evidence
  instead of failing the pair.
- horizon-decay (§6.1): overlap falls along the response; recommends a response-length cap.
- template-mismatch (§5.2): teacher and student chat templates differ; informational.
- stop-disagreement (compare's lint, docs/lint.md): at most of the states where the student stopped, the teacher
  gives its stop token a small probability: OPD penalises every stop and responses run long (ms-swift#9526). A
  caution. The lint's renderer bias and determinism stay warnings (docs/lint.md says why).

No rule reads the other candidates of the run: a teacher gets the same status probed alone or in a set (the
teachers it is indistinguishable from are named in messages and recommendations only). A rule relative to the
strongest candidate in the run was removed for that reason (docs/metrics.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Collection

from .lint import StopAgreement
from .thresholds import Thresholds
from .types import ContinuationGain, Reason, Verdict

SEVERITY = {"go": 0, "info": 0, "caution": 1, "no-go": 2}
STATUSES = ("go", "caution", "no-go")
APPROXIMATE_NOTE = " (value approximate: see the warnings)"


@dataclass(frozen=True)
class Evidence:
    """What the rules read for one teacher besides its pooled means (see ``decide``)."""

    depth_overlap: tuple[tuple[int, int, float], ...] = ()
    continuation: tuple[ContinuationGain, ...] = ()
    indistinguishable_from: tuple[str, ...] = ()
    template_differs: bool = False
    template_choice: dict | None = None
    stop: StopAgreement | None = None


def _below(code, sev, metric, value, th, msg) -> Reason | None:
    return Reason(code, sev, metric, value, th, "<", msg) if value is not None and value < th else None


def _above(code, sev, metric, value, th, msg) -> Reason | None:
    return Reason(code, sev, metric, value, th, ">", msg) if value is not None and value > th else None


def decide(
    teacher: str,
    pooled: dict[str, float],
    th: Thresholds,
    *,
    depth_overlap: list[tuple[int, int, float]] | None = None,
    continuation: list[ContinuationGain] | None = None,
    indistinguishable_from: list[str] | None = None,
    template_differs: bool = False,
    template_choice: dict | None = None,
    approximate: Collection[str] = (),
    stop: StopAgreement | None = None,
) -> Verdict:
    """Verdict for one teacher.

    ``pooled``: metric -> pooled mean (keys of metrics.METRICS). ``depth_overlap``: (start, n_states,
    overlap ratio) per depth bucket. ``continuation``: one ContinuationGain per probed depth when prompts carry
    answers. ``indistinguishable_from``: other teachers that look the same from the student's states.
    ``template_choice``: the measured comparison of the student's and the teacher's own template
    (templates.compare_renderings: "recommended", "decided_by", "reason"), which replaces the generic template
    advice. ``approximate``: metrics whose values are estimates (vLLM scoring); a reason resting on one says so.
    ``stop``: the lint's stop-token agreement (lint.py), when it was measured.
    """
    ev = Evidence(tuple(depth_overlap or ()), tuple(continuation or ()),
                  tuple(indistinguishable_from or ()), template_differs, template_choice, stop)
    reasons: list[Reason] = []
    recs: list[str] = []
    _pattern_rules(pooled, th, reasons, recs)
    novelty_known = _novelty_rules(ev, th, reasons, recs)
    _signal_rules(teacher, pooled, ev, th, novelty_known, reasons, recs)
    _horizon_rule(ev, th, reasons, recs)
    _template_rules(ev, reasons, recs)
    _stop_rule(ev, th, reasons, recs)
    reasons = [replace(r, approximate=True, message=r.message + APPROXIMATE_NOTE) if r.metric in approximate else r
               for r in reasons]
    status = max((r.severity for r in reasons), key=SEVERITY.__getitem__, default="go")
    status = "go" if status == "info" else status
    return Verdict(teacher, status, tuple(reasons), tuple(dict.fromkeys(recs)))


def _pattern_rules(pooled: dict[str, float], th: Thresholds, reasons: list[Reason], recs: list[str]) -> None:
    """Thinking-pattern compatibility (arXiv 2604.13016 §3.1, §5), read as support: at how many of the student's
    states the teacher rules out what the student does (docs/validation.md). A teacher that spreads more mass over
    other tokens but still supports the student's own ones was harmless on the benchmark (overlap ratio 0.37, gain
    +0.94); one that gives the student's tokens almost nothing wrecked OPD on the zoo (docs/zoo.md)."""
    unsupported, gap = pooled.get("unsupported"), pooled.get("entropy_gap")
    pattern = [
        _above("pattern-mismatch", "no-go", "unsupported", unsupported, th.unsupported_nogo,
               "at many of the student's states the teacher gives the student's own likely tokens almost no "
               "probability: OPD pushes the student off its own way of writing"),
        _above("pattern-mismatch", "caution", "entropy_gap", gap, th.entropy_gap_caution,
               "teacher and student are confident at different places"),
    ]
    pattern = [r for r in pattern if r]
    reasons += pattern
    if pattern:
        recs.append(f"cold start: SFT the student on ~{th.cold_start_rollouts} teacher rollouts first, then "
                    f"re-probe (opd-probe verify STUDENT TEACHER --cold-start {th.cold_start_rollouts})")
        recs.append("or align the prompts with the teacher's post-training template and data, mixed with "
                    "out-of-distribution prompts to keep the student's entropy up (paper §5.2)")


def _novelty_rules(ev: Evidence, th: Thresholds, reasons: list[Reason], recs: list[str]) -> bool:
    """Knowledge novelty from answers (arXiv 2604.13016 §3.2-3.3, §6.1); returns whether answers were probed."""
    if not ev.continuation:
        return False
    # Fitted on the validation benchmark's dev family (docs/validation.md): OPD worked from every teacher with a
    # depth-0 gain of +0.17 or more and from none at +0.08 or less, hence a caution under min_answer_gain; a gain
    # above it but within 2 standard errors (few prompts) stays unresolved and is reported as info.
    base = next((c for c in ev.continuation if c.depth == 0), None)
    clear_gain = base is not None and base.gain > 2 * base.se
    if base is not None and base.gain < 0 and base.gain < -2 * base.se:
        reasons.append(Reason(
            "low-novelty", "no-go", "continuation_gain@0", base.gain, round(-2 * base.se, 6), "<",
            f"the teacher is clearly less accurate than the student on these prompts "
            f"({base.teacher_accuracy:.2f} vs {base.student_accuracy:.2f}): nothing to teach, and OPD can "
            "drag a stronger student back (reverse distillation)"))
        recs.append("pick another teacher: one that solves these prompts better than the student")
    elif base is not None and base.gain < th.min_answer_gain:
        reasons.append(Reason(
            "low-novelty", "caution", "continuation_gain@0", base.gain, th.min_answer_gain, "<",
            f"the teacher solves these prompts barely more often than the student ({base.teacher_accuracy:.2f} vs "
            f"{base.student_accuracy:.2f}): on the validation benchmark OPD gained nothing at such a margin"))
        recs.append("expect little gain: pick a teacher that solves these prompts clearly more often than the "
                    "student, or run opd-probe verify to measure it")
    elif base is not None and not clear_gain:
        reasons.append(Reason(
            "low-novelty", "info", "continuation_gain@0", base.gain, round(2 * base.se, 6), "<=",
            f"answers do not tell whether the teacher knows more than the student ({base.teacher_accuracy:.2f}"
            f" vs {base.student_accuracy:.2f}, within noise)"))
        recs.append("probe more prompts with answers, or run opd-probe verify, to tell whether the teacher "
                    "knows more than the student")
    deeper = [c for c in ev.continuation if c.depth > 0]
    if not clear_gain and deeper and all(c.gain <= th.min_continuation_gain for c in deeper):
        best = max(deeper, key=lambda c: c.gain)
        reasons.append(Reason(
            "low-novelty", "caution", f"continuation_gain@{best.depth}", best.gain, th.min_continuation_gain, "<=",
            "continuing the student's own prefixes, the teacher reaches the answer no more often than the "
            "student does"))
        recs.append("expect little gain: the teacher adds no knowledge at the student's states; prefer a "
                    "teacher trained on other data or with RL beyond the student's recipe")
    return True


def _signal_rules(teacher: str, pooled: dict[str, float], ev: Evidence, th: Thresholds, novelty_known: bool,
                  reasons: list[Reason], recs: list[str]) -> None:
    """Signal strength (arXiv 2604.13016 app. B.2): a tiny step-0 top-k reverse KL; and the teachers that are
    indistinguishable at the student's states (messages and recommendations only)."""
    kl = pooled.get("topk_reverse_kl")
    if kl is not None:
        weak = _below("weak-signal", "caution", "topk_reverse_kl", kl, th.weak_signal_kl,
                      "the step-0 OPD loss is near zero: the teacher already agrees with the student")
        if weak is not None:
            if ev.indistinguishable_from:
                weak = replace(weak, message=weak.message + f"; indistinguishable from "
                               f"{', '.join(ev.indistinguishable_from)} at the student's states")
            reasons.append(weak)
            if not novelty_known:
                recs.append("check novelty before training: add reference answers to the prompts and probe with "
                            "--continuation-depths 0,256, or run opd-probe verify")
    if ev.indistinguishable_from:
        recs.append(f"{teacher} teaches the same as {', '.join(ev.indistinguishable_from)} from the student's "
                    "states: prefer the cheapest of them")


def _horizon_rule(ev: Evidence, th: Thresholds, reasons: list[Reason], recs: list[str]) -> None:
    """Overlap falling along the response (arXiv 2604.13016 §6.1): recommends a response-length cap."""
    trusted = [(s, o) for s, n, o in ev.depth_overlap if n >= th.horizon_min_states]
    if len(trusted) < 2:
        return
    first = trusted[0][1]
    worst_start, worst = min(trusted[1:], key=lambda so: so[1])
    if first - worst > th.horizon_drop:
        reasons.append(Reason(
            "horizon-decay", "caution", f"overlap_ratio@{worst_start}", round(first - worst, 4), th.horizon_drop, ">",
            f"overlap falls from {first:.2f} (first bucket) to {worst:.2f} at response depth {worst_start}"))
        recs.append(f"cap the OPD response length near {worst_start} tokens, where the teacher's signal "
                    "decays (paper §6.1: 3K-7K best, 10K+ collapse late)")


def _template_rules(ev: Evidence, reasons: list[Reason], recs: list[str]) -> None:
    """Chat templates (arXiv 2604.13016 §5.2): informational, with the measured choice when there is one."""
    choice = ev.template_choice
    if ev.template_differs:
        reasons.append(Reason("template-mismatch", "info", "chat_template_hash", None, None, "!=",
                              "the teacher's chat template differs from the student's; it scored prompts rendered "
                              "with the student's template, as OPD trainers do"))
        if choice is None:
            recs.append("try OPD prompts rendered with the teacher's own template (paper §5.2: recovery ~80% -> "
                        "~85%); measure it first: opd-probe compare ... --template student,teacher")
    if choice is None:
        return
    if choice.get("recommended") == "teacher":
        recs.append(f"have the teacher score prompts rendered with its own chat template: {choice['reason']}")
    elif choice.get("decided_by"):
        recs.append(f"keep the student's template for the teacher's prompts: {choice['reason']}")
    else:
        recs.append("the teacher's own template made no measurable difference at the student's states: keep "
                    "the student's template")


def _stop_rule(ev: Evidence, th: Thresholds, reasons: list[Reason], recs: list[str]) -> None:
    """The teacher's probability of the student's stop token where the student stopped (docs/lint.md). OPD's
    per-token reward there is log q(stop) - log p(stop): under q < 0.1 every stop is penalised by about 2 nats or
    more, so training teaches the student not to stop (modelscope/ms-swift#9526: lengths explode, the student
    repeats). Thresholds provisional (thresholds.py)."""
    st = ev.stop
    if st is None or st.n_stops < th.stop_min_states or st.low_share is None or st.low_share <= th.stop_low_share:
        return
    reasons.append(Reason(
        "stop-disagreement", "caution", "stop_low_share", round(st.low_share, 4), th.stop_low_share, ">",
        f"at {st.low_share:.0%} of the {st.n_stops} states where the student stopped, the teacher gives its stop "
        f"token p < {st.low_prob:g} (mean {st.teacher_prob_mean:.3f}): OPD penalises stopping and responses run "
        "long"))
    recs.append("align the stop tokens before OPD: the student's stop ids should hold the token the teacher ends "
                "its turns with (opd-probe check shows both); or cap the OPD response length")


def rank_key(status: str, pooled: dict[str, float], continuation: Collection[ContinuationGain] | None) -> tuple:
    """Ranking (documented in docs/metrics.md): status first (go, caution, no-go); then evidence of novelty
    (the best continuation gain, when answers were probed); then compatibility (student overlap mass, then ratio)."""
    def nz(x):
        return -1e9 if x is None or x != x else x

    gain = max((c.gain for c in continuation), default=None) if continuation else None
    return (SEVERITY[status], -nz(gain) if gain is not None else 0.0, -nz(pooled.get("overlap_mass_student")),
            -nz(pooled.get("overlap_ratio")))


def predicted_gain(pooled: dict[str, float], novelty: dict) -> float:
    """The verdict's continuous score (docs/validation.md): the teacher's knowledge advantage on the probe prompts
    (the depth-0 continuation gain: teacher accuracy minus student accuracy answering the prompts themselves) on
    the share of the student's states where the teacher supports what the student does (1 - unsupported). NaN
    without answer-based evidence (no continuation at depth 0).

    Version 2, chosen on the dev family: version 1 discounted by the overlap mass, which near-equal tokens make a
    matter of chance (0.60-0.72 for every dev teacher, working or not)."""
    gain = next((c["gain"] for c in novelty.get("continuation") or () if c["depth"] == 0), None)
    unsupported = pooled.get("unsupported")
    if gain is None or unsupported is None:
        return float("nan")
    return float(gain) * (1.0 - float(unsupported))
