"""run_probe(config) -> ProbeResults. Orchestration only: never prints (progress goes through a callback).

prompts -> render with the student's template -> student rollouts -> student scores (inputs.py; or --reuse: an
earlier run's) -> every teacher scores the same token ids, under each --template rendering (renderings.py) ->
per-state metrics -> aggregates -> one PairResult per teacher -> verdicts and ranking -> the out directory.
Rollouts and scores are saved per finished batch, so an interrupted run resumes without redoing them, and --reuse
scores new teachers on old states.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import __version__, costs, metrics, novelty, templates
from ..approximations import approximation_how, approximation_warnings, approximations
from ..backends import check_backend, load_backend_model
from ..backends.base import ModelSpec, ScoreArrays
from ..lint import Lint, lint_warning
from ..config import ProbeConfig
from ..errors import InputError
from ..rundir import OutDir
from ..thresholds import Thresholds
from ..types import Novelty, PairResult, ProbeResults, Rollout
from ..crossverdict import decide_cross
from ..verdict import decide, rank_key
from . import cross, evidence
from .preflight import fail_fast
from .inputs import StudentSide, fresh_student_side, probe_prompts, reused_student_side
from .lint import measure_lint
from .renderings import score_templates
from .stages import NullProgress, Progress, environment, free_model, load_teacher, model_spec, state_metrics


def teacher_slug(index: int, name: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name.rstrip("/")).name or name).strip("-") or "teacher"
    return f"teacher-{index}-{base[:40]}"


def run_probe(cfg: ProbeConfig, progress: Progress | None = None, thresholds: Thresholds | None = None,
              fail_on: Sequence[str] = ()) -> ProbeResults:
    """Run the probe end to end and write the out directory. Raises ProbeError subclasses on bad input.

    ``fail_on``: verdict statuses that trip the gate (empty: no gate); the outcome is in ``results.gate``.
    """
    progress = progress or NullProgress()
    thresholds = thresholds or Thresholds()
    started = time.perf_counter()
    # fail before anything is loaded or written when a backend is missing (vLLM is an optional extra)
    check_backend(cfg.rollout_backend_used, "--rollout-backend" if cfg.rollout_backend else "--backend")
    check_backend(cfg.score_backend_used, "--score-backend" if cfg.score_backend else "--backend")
    created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    prompts = probe_prompts(cfg)  # validate before loading any model
    pre_warnings = fail_fast(cfg, cfg.student, cfg.teachers, prompts)  # configs and tokenizers only, no weights
    out = OutDir(cfg.out)
    out.prepare(cfg.to_dict(), resume=cfg.resume, overwrite=cfg.overwrite,
                numbers_key=lambda d: ProbeConfig.from_dict(d).numbers_key())
    timings: dict = {}

    if cfg.reuse is not None:
        student = reused_student_side(cfg, out, progress)
    else:
        student = fresh_student_side(cfg, prompts, out, progress, timings)
    states = _index_states(cfg, student)
    scored = [_score_teacher(cfg, ti, name, student, states, out, progress) for ti, name in enumerate(cfg.teachers)]

    pairs = [s.pair for s in scored]
    teacher_arrays = {s.pair.teacher: s.arrays for s in scored if s.arrays is not None}
    if cfg.grad_norm:
        pairs = _with_grad_norms(model_spec(cfg.student, cfg), cfg.score_batch_tokens, pairs, student.rollouts,
                                 student.scores, teacher_arrays, progress)
    dist = novelty.distinguishability(student.scores.topk_ids_LK, teacher_arrays) if len(teacher_arrays) > 1 else None
    warnings = pre_warnings + _distinguishability_warnings(dist, scored)
    pairs = _with_verdicts(pairs, thresholds, dist, {s.pair.teacher: s.template_differs for s in scored})
    ranking = tuple(p.teacher for p in sorted(pairs, key=lambda p: rank_key(
        p.verdict.status, _means(p), p.novelty.continuation)))
    rollout_meta = _rollout_meta(cfg, student, states)
    warnings += _length_warnings(cfg, rollout_meta)
    timings["total_seconds"] = time.perf_counter() - started
    results = ProbeResults(
        tool_version=__version__, created_at=created_at, config=cfg.to_dict(), environment=environment(),
        student=student.info, prompts=student.prompts_meta, rollouts=rollout_meta, pairs=tuple(pairs),
        ranking=ranking, timings=timings, warnings=tuple(warnings), thresholds=thresholds.to_dict(),
        distinguishability=dist, gate=gate_outcome(pairs, fail_on),
    )
    if cfg.plan_steps is not None:
        plan = costs.Plan(steps=cfg.plan_steps, batch=cfg.plan_batch, max_tokens=cfg.plan_max_tokens)
        results = replace(results, plan=costs.project_results(plan, results))
    _write_outputs(out, student, scored, results)
    return results


# ---------------------------------------------------------------------------------------------------- the states
@dataclass(frozen=True)
class _States:
    """Where every scored state sits (its rollout's prompt, its depth in the response), the depth buckets, the
    student's top-k ids per rollout (the teachers' query ids), and the student's correctness per rollout."""

    lengths: np.ndarray  # response length per rollout
    prompt_N: np.ndarray
    depth_N: np.ndarray
    n_prompts: int
    prompt_ids: dict[int, str]  # prompt index -> id, for the prompts that have rollouts
    edges: np.ndarray
    student_query: list[np.ndarray]
    correct: np.ndarray | None


def _index_states(cfg: ProbeConfig, student: StudentSide) -> _States:
    if cfg.continuation_depths and not student.answers:
        raise InputError("--continuation-depths needs prompts with reference answers ('answer' field)",
                         fix="add answers to the prompt file, or drop --continuation-depths")
    rollouts = student.rollouts
    correct = novelty.student_correct(rollouts, student.answers) if student.answers else None
    lengths = np.array([len(r.response_token_ids) for r in rollouts])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return _States(
        lengths=lengths, prompt_N=np.repeat([r.prompt_index for r in rollouts], lengths),
        depth_N=np.concatenate([np.arange(n) for n in lengths]),
        n_prompts=max(r.prompt_index for r in rollouts) + 1,
        prompt_ids={r.prompt_index: r.prompt_id for r in rollouts},
        edges=metrics.depth_edges_for(cfg.depth_bucket, int(lengths.max())),
        student_query=[student.scores.topk_ids_LK[offsets[i]:offsets[i + 1]] for i in range(len(rollouts))],
        correct=correct,
    )


# ---------------------------------------------------------------------------------------------------- a teacher
@dataclass(frozen=True)
class _TeacherRun:
    """One teacher's scores (under each rendering) and what was measured while it was loaded."""

    name: str
    slug: str
    info: dict
    load_seconds: float
    vocab_warnings: tuple[str, ...]
    by_template: dict  # template -> (ScoreArrays, timing)
    templates: dict  # the pair's templates record, without the comparison numbers
    scores: ScoreArrays  # under the primary template: what the verdict reads
    timing: dict
    novelty: Novelty
    template_differs: bool
    lint: Lint


@dataclass(frozen=True)
class _Scored:
    """A teacher's PairResult (before verdicts), its rows of states.parquet, and what the run-level steps need."""

    pair: PairResult
    frame: object  # pandas.DataFrame
    arrays: tuple[np.ndarray, np.ndarray] | None  # (top-k ids, log-probs at the student's top-k ids); None: a
    # teacher with another tokenizer (neither is over the student's ids)
    query_exact: bool
    template_differs: bool


def _score_teacher(cfg: ProbeConfig, index: int, name: str, student: StudentSide, states: _States, out: OutDir,
                   progress: Progress) -> _Scored:
    if cross.needs_text_alignment(student.vocab, model_spec(name, cfg), cfg.alignment):
        pair, per_state, exact = cross.score_cross_teacher(cfg, name, teacher_slug(index, name), student, states, out,
                                                           progress)
        return _Scored(pair=pair, frame=_state_frame(name, student.rollouts, states, per_state, exact), arrays=None,
                       query_exact=True, template_differs=False)
    run = _run_teacher(cfg, name, teacher_slug(index, name), student, states, out, progress)
    pair, per_state, exact = _pair_result(cfg, run, student, states)
    q = run.scores.query_exact_LQ
    return _Scored(pair=pair, frame=_state_frame(name, student.rollouts, states, per_state, exact),
                   arrays=(run.scores.topk_ids_LK, run.scores.query_logprobs_LQ),
                   query_exact=q is None or bool(q.all()), template_differs=run.template_differs)


def _run_teacher(cfg: ProbeConfig, name: str, slug: str, student: StudentSide, states: _States, out: OutDir,
                 progress: Progress) -> _TeacherRun:
    """Load a teacher, score the rollouts under each --template rendering, measure its continuations, free it."""
    progress.log(f"loading teacher {name}")
    t0 = time.perf_counter()
    teacher, vocab_warnings = load_teacher(cfg.score_backend_used, model_spec(name, cfg), cfg.top_k, student.vocab,
                                           name)
    if vocab_warnings:  # tokens the student lacks: do they change how the teacher splits the student's text?
        split = cross.split_warning(student.tokenizer, cross.teacher_tokenizer(model_spec(name, cfg)),
                                    student.rollouts, name)
        vocab_warnings = vocab_warnings + ([split] if split else [])
    load_s = time.perf_counter() - t0
    by_template, pair_templates = score_templates(
        teacher, name, slug, student.rollouts, student.teacher_views.get(name), student.tokenizer, out, progress,
        states.student_query, template=cfg.template, k=cfg.top_k, budget=cfg.score_batch_tokens,
        chat_template=cfg.chat_template)
    primary = templates.primary_template(cfg.template)
    t_scores, t_timing = by_template[primary]
    if primary != "student":
        t_timing = {**t_timing, "template": primary}
    pair_novelty = Novelty()
    if cfg.continuation_depths:
        progress.log(f"continuation gain of {name} at depths {list(cfg.continuation_depths)}")
        t0 = time.perf_counter()
        pair_novelty = Novelty(continuation=tuple(evidence.continuation_gain(
            teacher, student.rollouts, states.correct, student.answers, cfg.continuation_depths, cfg.max_new_tokens,
            seed=cfg.seed)))
        t_timing["continuation_seconds"] = time.perf_counter() - t0
    progress.log(f"lint of {name}: renderer bias, stop-token agreement, scoring determinism")
    pair_lint = measure_lint(teacher, student.rollouts, student.prompts, by_template, student.scores, primary,
                             budget=cfg.score_batch_tokens, n_boot=cfg.n_boot, seed=cfg.seed, level=cfg.ci_level)
    # the "scored under the student's template" note only holds when that is the rendering the verdict uses
    differs = primary == "student" and teacher.info.get("chat_template_hash") != student.info.get("chat_template_hash")
    info = teacher.info
    free_model(teacher)
    return _TeacherRun(name=name, slug=slug, info=info, load_seconds=load_s, vocab_warnings=tuple(vocab_warnings),
                       by_template=by_template, templates=pair_templates, scores=t_scores, timing=t_timing,
                       novelty=pair_novelty, template_differs=differs, lint=pair_lint)


def _pair_result(cfg: ProbeConfig, run: _TeacherRun, student: StudentSide,
                 states: _States) -> tuple[PairResult, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The pair's metrics per state and pooled, its estimates flagged, the template comparison. Returns (the
    PairResult without a verdict, per-state metrics, exact-masks)."""
    s, t = student.scores, run.scores
    per_state = state_metrics(s, t)
    exact = metrics.exact_states(s.entropy_exact_L, t.entropy_exact_L, t.query_exact_LQ)
    approx = approximations(exact, approximation_how(s, student.info, t, run.info))
    pair_warnings = list(run.vocab_warnings) + approximation_warnings(approx) + [
        w for w in [lint_warning(run.lint)] if w]
    agg = metrics.aggregate(per_state, states.prompt_N, states.depth_N, states.n_prompts, states.edges,
                            n_boot=cfg.n_boot, seed=cfg.seed, level=cfg.ci_level)
    pair_templates, timing = dict(run.templates), run.timing
    if "teacher" in run.by_template and "student" in run.by_template:
        other_scores, other_timing = run.by_template["teacher"]
        pair_templates.update(templates.compare_renderings(per_state, state_metrics(s, other_scores), states.prompt_N,
                                                           states.n_prompts, n_boot=cfg.n_boot, seed=cfg.seed,
                                                           level=cfg.ci_level))
        timing = {**timing, **{f"teacher_template_{k}": v for k, v in other_timing.items()}}
    pair = PairResult(
        teacher=run.name, slug=run.slug, model=run.info, pooled=agg["pooled"], depth=tuple(agg["depth"]),
        per_prompt=metrics.per_prompt_table(agg, states.prompt_ids),
        timings={"load_seconds": run.load_seconds, **timing, "lint_seconds": run.lint.seconds},
        warnings=tuple(pair_warnings) + tuple(pair_templates.pop("warnings", ())),
        novelty=run.novelty, templates=pair_templates, approximate=approx, lint=run.lint,
    )
    return pair, per_state, exact


def _state_frame(name: str, rollouts: list[Rollout], states: _States, per_state: dict[str, np.ndarray],
                 exact: dict[str, np.ndarray]):
    """The teacher's rows of states.parquet: one per scored state."""
    import pandas as pd

    lengths, n = states.lengths, len(states.depth_N)
    return pd.DataFrame({
        "teacher": name,
        "rollout_id": np.repeat([r.rollout_id for r in rollouts], lengths),
        "prompt_id": np.repeat([r.prompt_id for r in rollouts], lengths),
        "position": states.depth_N,
        "token_id": np.concatenate([r.response_token_ids for r in rollouts]),
        **{m: v.astype(np.float32) for m, v in per_state.items()},
        # False where a value is an estimate (vLLM scoring; see results.json pairs[].approximate)
        "entropy_exact": exact.get("entropy_gap", np.ones(n, dtype=bool)),
        "topk_reverse_kl_exact": exact.get("topk_reverse_kl", np.ones(n, dtype=bool)),
    })


# ---------------------------------------------------------------------------------------------------- the run
def _distinguishability_warnings(dist: dict | None, scored: list[_Scored]) -> list[str]:
    inexact = [s.pair.teacher for s in scored if not s.query_exact]
    if dist is None or not inexact:
        return []
    return [f"teacher-vs-teacher KL (distinguishability) uses upper bounds for some teacher log-probs at the "
            f"student's top-k ids ({', '.join(inexact)}; see pairs[].approximate.topk_reverse_kl): approximate"]


def _rollout_meta(cfg: ProbeConfig, student: StudentSide, states: _States) -> dict:
    """results.json "rollouts": counts, lengths, finish reasons, the student's accuracy, the sampling figures."""
    rollouts, lengths, correct = student.rollouts, states.lengths, states.correct
    finish = [r.finish_reason for r in rollouts]
    return {
        "count": len(rollouts),
        "prompts": len(states.prompt_ids),
        "samples_per_prompt": student.prompts_meta.get("samples_per_prompt", cfg.samples),
        "states": int(lengths.sum()),
        "response_length_mean": float(lengths.mean()),
        "response_length_max": int(lengths.max()),
        "prompt_length_mean": float(np.mean([len(r.prompt_token_ids) for r in rollouts])),
        "finish_reasons": {k: finish.count(k) for k in sorted(set(finish))},
        "with_answers": int(np.isfinite(correct).sum()) if correct is not None else 0,
        "student_accuracy": float(np.nanmean(correct)) if correct is not None else None,
        **student.sample_timing,
    }


def _length_warnings(cfg: ProbeConfig, rollout_meta: dict) -> list[str]:
    n, cut = rollout_meta["count"], rollout_meta["finish_reasons"].get("length", 0)
    if cut <= 0.5 * n:
        return []
    return [f"{cut} of {n} rollouts hit --max-new-tokens {rollout_meta.get('max_new_tokens') or cfg.max_new_tokens}; "
            "states deeper than that are not probed"]


def _write_outputs(out: OutDir, student: StudentSide, scored: list[_Scored], results: ProbeResults) -> None:
    import pandas as pd

    out.write_parquet("states.parquet", pd.concat([s.frame for s in scored], ignore_index=True))
    out.write_tokens(token_strings(student.tokenizer, student.rollouts,
                                   [student.scores.topk_ids_LK] + [s.arrays[0] for s in scored if s.arrays]))
    out.write_results(results)


def token_strings(tokenizer, rollouts: list[Rollout], topk_ids: list[np.ndarray], top: int = 5) -> dict[int, str]:
    """Readable text of every token a report may show: the responses, and each model's top few ids per state,
    so reports are rebuilt from the out directory without loading a tokenizer."""
    ids = {int(t) for r in rollouts for t in r.response_token_ids}
    for arr in topk_ids:
        ids.update(int(t) for t in np.unique(arr[:, :top]))
    return {i: tokenizer.decode([i], skip_special_tokens=False) for i in sorted(ids)}


def gate_outcome(pairs: Sequence[PairResult], fail_on: Sequence[str]) -> dict | None:
    """Every gated pair must pass: the gate trips when any teacher's status is in ``fail_on``."""
    if not fail_on:
        return None
    tripped = [p.teacher for p in pairs if p.verdict.status in fail_on]
    return {"fail_on": list(fail_on), "passed": not tripped, "tripped_by": tripped}


def _means(pair: PairResult) -> dict[str, float]:
    return {m: e.mean for m, e in pair.pooled.items()}


def _with_verdicts(pairs: list[PairResult], th: Thresholds, dist: dict | None,
                   template_differs: dict[str, bool]) -> list[PairResult]:
    """Attach a verdict to every pair. Each status depends on that pair alone; the other candidates only name the
    teachers it is indistinguishable from."""
    same = novelty.indistinguishable_pairs(dist, th.indistinguishable_overlap, th.indistinguishable_kl) if dist else {}
    out = []
    for p in pairs:
        if p.alignment:  # another tokenizer: its own rules (crossverdict.py)
            out.append(replace(p, verdict=decide_cross(p.teacher, _means(p), th, continuation=p.novelty.continuation)))
            continue
        depth = [(b["start"], b["n_states"], b["metrics"]["overlap_ratio"].mean) for b in p.depth]
        v = decide(p.teacher, _means(p), th, depth_overlap=depth,
                   continuation=p.novelty.continuation, indistinguishable_from=same.get(p.teacher),
                   template_differs=template_differs.get(p.teacher, False),
                   template_choice=p.templates if "recommended" in p.templates else None, approximate=p.approximate,
                   stop=p.lint.stop if p.lint is not None else None)
        out.append(replace(p, verdict=v))
    return out


def _with_grad_norms(spec: ModelSpec, budget: int, pairs: list[PairResult], rollouts: list[Rollout],
                     student_scores: ScoreArrays, teacher_arrays: dict, progress: Progress) -> list[PairResult]:
    """Step-0 gradient norm of the OPD top-k loss per teacher: one student (``spec``) backward pass each, in
    batches of ``budget`` tokens (opt-in)."""
    progress.log("step-0 gradient norms: loading the student for backward passes")
    # a backward pass needs the model in torch: always the transformers backend, whatever scored the states
    student = load_backend_model("hf", spec, role="student")
    progress.stage("step-0 gradient norms", len(pairs))
    out = []
    for p in pairs:
        if p.teacher not in teacher_arrays:  # another tokenizer: no log-probs at the student's ids to differentiate
            out.append(replace(p, warnings=p.warnings + (
                "--grad-norm: not measured for a teacher with another tokenizer (the OPD top-k loss needs its "
                "log-probs of the student's token ids)",)))
            progress.advance(1)
            continue
        t0 = time.perf_counter()
        norm = evidence.step0_grad_norm(student, rollouts, student_scores.topk_ids_LK, teacher_arrays[p.teacher][1],
                                       batch_tokens=budget)
        approx = dict(p.approximate)
        if "topk_reverse_kl" in approx:  # the loss it differentiates uses the same teacher log-probs
            approx["grad_norm"] = {**approx["topk_reverse_kl"], "exact_fraction": None}
        out.append(replace(p, novelty=replace(p.novelty, grad_norm=norm), approximate=approx,
                           timings={**p.timings, "grad_norm_seconds": time.perf_counter() - t0}))
        progress.advance(1)
    free_model(student)
    return out


