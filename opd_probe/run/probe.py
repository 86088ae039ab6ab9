"""run_probe(config) -> ProbeResults. Orchestration only: never prints (progress goes through a callback).

prompts -> render with the student's template -> student rollouts -> student scores -> every teacher scores the
same token ids -> per-state metrics -> aggregates -> results. Rollouts and scores are saved per finished batch,
so an interrupted run resumes without redoing them, and --reuse scores new teachers on old states.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import __version__, costs, metrics, novelty, templates
from ..backends import check_backend, load_backend_model
from ..backends.base import SamplingSettings, ScoreArrays
from ..config import ProbeConfig
from ..errors import InputError, ModelLoadError
from ..prompts import load_prompts, template_hash
from ..rundir import OutDir
from ..thresholds import Thresholds
from ..types import Novelty, PairResult, ProbePrompt, ProbeResults, Rollout
from ..verdict import decide, rank_key
from ..vocab import check_vocab
from . import evidence
from .preflight import fail_fast
from .stages import (NullProgress, Progress, batches_by_tokens, check_top_k, environment, file_sha256, free_model,
                     model_spec, sampling_seed)

STUDENT_SLUG = "student"
PART_ROLLOUTS = 64  # rollouts per saved score part: the resume granularity of scoring


def teacher_slug(index: int, name: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name.rstrip("/")).name or name).strip("-") or "teacher"
    return f"teacher-{index}-{base[:40]}"


# ---------------------------------------------------------------------------------------------------- sampling
def sample_rollouts(student, prompts: list[ProbePrompt], rendered: list[list[int]], cfg: ProbeConfig,
                    out: OutDir, progress: Progress) -> tuple[list[Rollout], dict]:
    """Student rollouts for every prompt; prompts already on disk (a resumed run) are not sampled again."""
    done = out.read_rollouts(samples=cfg.samples)
    out.rewrite_rollouts(done)  # drop a torn line or a half-finished prompt before appending
    done_prompts = {r.prompt_index for r in done}
    settings = SamplingSettings(samples=cfg.samples, temperature=cfg.temperature, top_p=cfg.top_p,
                                max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, batch_size=cfg.batch_size)
    per_call = max(1, cfg.batch_size // cfg.samples)
    progress.stage("sampling student rollouts", len(prompts) * cfg.samples)
    progress.advance(len(done))
    t0, new_tokens = time.perf_counter(), 0
    # Batches are fixed slices of the prompt list (not of the to-do list) and each is seeded by its first
    # prompt index, so a resumed run samples exactly what the uninterrupted run would have.
    for start in range(0, len(prompts), per_call):
        batch = list(range(start, min(start + per_call, len(prompts))))
        if not any(i not in done_prompts for i in batch):
            continue
        # A torn write can leave part of a batch on disk: sample the whole slice again (same seed, same
        # shapes, same draws) and keep only the missing prompts.
        gens = student.generate([rendered[i] for i in batch], settings, seed=sampling_seed(cfg.seed, start))
        fresh = []
        for i, g_list in zip(batch, gens):
            if i in done_prompts:
                continue
            for j, g in enumerate(g_list):
                fresh.append(Rollout(
                    rollout_id=i * cfg.samples + j, prompt_index=i, prompt_id=prompts[i].id, sample_index=j,
                    prompt_token_ids=tuple(rendered[i]), response_token_ids=g.response_ids,
                    response_text=student.decode(g.response_ids), finish_reason=g.finish_reason,
                ))
                new_tokens += len(g.response_ids)
        out.append_rollouts(fresh)
        done.extend(fresh)
        progress.advance(len(fresh))
    seconds = time.perf_counter() - t0
    done.sort(key=lambda r: r.rollout_id)
    timing = {"sampling_seconds": seconds, "sampled_tokens": new_tokens,
              "sampling_tokens_per_second": new_tokens / seconds if seconds > 0 and new_tokens else None}
    return done, timing


# ---------------------------------------------------------------------------------------------------- scoring
def score_rollouts(model, rollouts: list[Rollout], k: int, slug: str, out: OutDir, cfg: ProbeConfig,
                   progress: Progress, query: list[np.ndarray] | None = None) -> tuple[ScoreArrays, dict]:
    """Score every rollout's response positions with ``model``; saved parts (a resumed run) are reused."""
    n = len(rollouts)
    pos = {r.rollout_id: i for i, r in enumerate(rollouts)}
    have: dict[int, ScoreArrays] = {}
    for first, last, arrays in out.read_score_parts(slug):
        lengths = [len(rollouts[pos[rid]].response_token_ids) for rid in range(first, last + 1)]
        if arrays["entropy_L"].shape[0] != sum(lengths):
            continue  # stale part (should not happen: parts are written atomically)
        whole = ScoreArrays(**{f: arrays.get(f) for f in ScoreArrays.FIELDS})
        start = 0
        for rid, length in zip(range(first, last + 1), lengths):
            have[pos[rid]] = whole.slice(start, start + length)
            start += length
    progress.stage(f"scoring with {slug}", n)
    progress.advance(len(have))
    seq_len = [len(r.prompt_token_ids) + len(r.response_token_ids) for r in rollouts]
    t0, tokens, states = time.perf_counter(), 0, 0
    # vLLM schedules its requests itself: hand it whole parts rather than token-budgeted batches
    budget = float("inf") if getattr(model, "schedules_own_batches", False) else cfg.score_batch_tokens
    for p0 in range(0, n, PART_ROLLOUTS):
        part = [i for i in range(p0, min(p0 + PART_ROLLOUTS, n))]
        if all(i in have for i in part):
            continue
        if model is None:
            raise InputError(f"saved scores in {out.scores_dir(slug)} do not cover every rollout",
                             fix="re-run the original probe to completion, or drop --reuse")
        for batch in batches_by_tokens(part, seq_len, budget):
            scored = model.score(
                [rollouts[i].prompt_token_ids for i in batch],
                [rollouts[i].response_token_ids for i in batch],
                k=k,
                query_ids_LQ=[query[i] for i in batch] if query is not None else None,
            )
            for i, s in zip(batch, scored):
                have[i] = s
            tokens += sum(seq_len[i] for i in batch)
            states += sum(len(s) for s in scored)
            progress.advance(len(batch))
        joined = ScoreArrays.concat([have[i] for i in part])
        out.write_score_part(slug, rollouts[part[0]].rollout_id, rollouts[part[-1]].rollout_id,
                             {f: getattr(joined, f) for f in ScoreArrays.FIELDS})
    seconds = time.perf_counter() - t0
    timing = {"scoring_seconds": seconds, "scored_tokens": tokens, "scored_states": states,
              "scoring_tokens_per_second": tokens / seconds if seconds > 0 and tokens else None}
    return ScoreArrays.concat([have[i] for i in range(n)]), timing


# ---------------------------------------------------------------------------------------------------- checks
def check_student_context(student, prompts: list[ProbePrompt], rendered: list[list[int]], cfg: ProbeConfig):
    ctx = student.context_length()
    if ctx is None:
        return
    for p, ids in zip(prompts, rendered):
        if len(ids) + cfg.max_new_tokens > ctx:
            raise InputError(
                f"prompt {p.id!r} (line/row {p.index + 1}) renders to {len(ids)} tokens; with "
                f"--max-new-tokens {cfg.max_new_tokens} that exceeds the student's context of {ctx} tokens",
                fix=f"shorten or drop that prompt, or lower --max-new-tokens to {max(ctx - len(ids), 0)} or less",
            )


def check_teacher_context(teacher, rollouts: list[Rollout], name: str):
    ctx = teacher.context_length()
    if ctx is None:
        return
    longest = max(rollouts, key=lambda r: len(r.prompt_token_ids) + len(r.response_token_ids))
    n = len(longest.prompt_token_ids) + len(longest.response_token_ids)
    if n > ctx:
        raise InputError(
            f"teacher {name} has a context of {ctx} tokens, but rollout {longest.rollout_id} "
            f"(prompt {longest.prompt_id!r}) is {n} tokens long",
            fix="lower --max-new-tokens (or drop the long prompts) so prompt + response fits the teacher",
        )


# ---------------------------------------------------------------------------------------------------- the run
def _reuse_inputs(cfg: ProbeConfig, out: OutDir) -> tuple[list[Rollout], dict, dict]:
    """Copy a previous run's prompts, rollouts and student scores into ``out``; check they fit this config."""
    src = OutDir(cfg.reuse)
    if not (src.path / "config.json").exists() or not (src.path / "rollouts.jsonl").exists():
        raise InputError(f"--reuse {src.path}: not an opd-probe out directory (no config.json/rollouts.jsonl)",
                         fix="point --reuse at the --out directory of an earlier compare run")
    old = json.loads((src.path / "config.json").read_text())
    if old["student"] != cfg.student:
        raise InputError(f"--reuse {src.path} holds rollouts of student {old['student']!r}, not {cfg.student!r}",
                         fix="pass the same student as the reused run, or drop --reuse to sample afresh")
    if old["top_k"] != cfg.top_k:
        raise InputError(f"--reuse {src.path} was scored with --top-k {old['top_k']}, not {cfg.top_k}",
                         fix=f"use --top-k {old['top_k']} with this --reuse, or drop --reuse")
    meta_path = src.path / "results.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    rollouts = src.read_rollouts(samples=old["samples"])
    if not rollouts:
        raise InputError(f"--reuse {src.path} has no finished rollouts", fix="run compare there to completion first")
    if not (src.scores_dir(STUDENT_SLUG)).is_dir():
        raise InputError(f"--reuse {src.path} has no saved student scores", fix="re-run the original probe")
    if out.path.resolve() != src.path.resolve():
        out.rewrite_rollouts(rollouts)
        if (src.path / "prompts.jsonl").exists():
            shutil.copyfile(src.path / "prompts.jsonl", out.path / "prompts.jsonl")
        dst = out.scores_dir(STUDENT_SLUG)
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src.scores_dir(STUDENT_SLUG), dst)
    prompts_meta = meta.get("prompts") or {"source": old.get("prompts")}
    prompts_meta = {**prompts_meta, "reused_from": str(src.path), "samples_per_prompt": old["samples"]}
    old_ro = meta.get("rollouts") or {}
    sample_timing = {"reused": True, "max_new_tokens": old.get("max_new_tokens")}
    if old_ro.get("sampling_tokens_per_second"):  # for cost projections: the rate the reused run measured
        sample_timing.update(sampling_tokens_per_second=old_ro["sampling_tokens_per_second"],
                             sampling_measured_in=str(src.path))
    return rollouts, meta.get("student", {"path": cfg.student}), prompts_meta, sample_timing


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
    if cfg.reuse is None:
        if cfg.prompts is None:
            raise InputError("no prompt set given", fix="pass --prompts FILE (e.g. sample_prompts/math.jsonl)")
        prompts = load_prompts(cfg.prompts, limit=cfg.limit)  # validate before loading any model
    pre_warnings = fail_fast(cfg, cfg.student, cfg.teachers, prompts if cfg.reuse is None else None)  # no weights
    out = OutDir(cfg.out)
    out.prepare(cfg.to_dict(), resume=cfg.resume, overwrite=cfg.overwrite,
                numbers_key=lambda d: ProbeConfig.from_dict(d).numbers_key())
    timings: dict = {}
    warnings: list[str] = list(pre_warnings)

    if cfg.reuse is not None:
        rollouts, student_info, prompts_meta, sample_timing = _reuse_inputs(cfg, out)
        prompts = _reused_prompts(cfg.reuse)
        answers = {p.index: p.answer for p in prompts if p.answer is not None}
        teacher_views = teacher_renderings(cfg, prompts)
        from transformers import AutoTokenizer

        try:
            from ..zoo import resolve

            student_tok = AutoTokenizer.from_pretrained(resolve(cfg.student), trust_remote_code=cfg.trust_remote_code)
            student_vocab = student_tok.get_vocab()
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"could not load the student tokenizer from {cfg.student!r}: {e}",
                                 fix="--reuse needs the student's folder for the vocabulary check") from e
        student_scores, _ = score_rollouts(None, rollouts, cfg.top_k, STUDENT_SLUG, out, cfg, progress)
    else:
        teacher_views = teacher_renderings(cfg, prompts)  # before sampling: a teacher without a template fails fast
        progress.log(f"loading student {cfg.student} ({cfg.rollout_backend_used})")
        t0 = time.perf_counter()
        student = load_backend_model(cfg.rollout_backend_used, model_spec(cfg.student, cfg), role="student")
        timings["student_load_seconds"] = time.perf_counter() - t0
        check_top_k(student, cfg.top_k, "student")
        rendered = [student.render(p, cfg.chat_template) for p in prompts]
        check_student_context(student, prompts, rendered, cfg)
        rollouts, sample_timing = sample_rollouts(student, prompts, rendered, cfg, out, progress)
        sample_timing["max_new_tokens"] = cfg.max_new_tokens
        if cfg.score_backend_used != cfg.rollout_backend_used:  # mixed backends: the scorer loads the student too
            free_model(student)
            progress.log(f"loading student {cfg.student} for scoring ({cfg.score_backend_used})")
            t0 = time.perf_counter()
            student = load_backend_model(cfg.score_backend_used, model_spec(cfg.student, cfg), role="student")
            timings["student_scorer_load_seconds"] = time.perf_counter() - t0
        student_scores, score_timing = score_rollouts(student, rollouts, cfg.top_k, STUDENT_SLUG, out, cfg, progress)
        sample_timing.update({f"student_{k}": v for k, v in score_timing.items()})
        student_info, student_vocab, student_tok = student.info, student.vocab(), student.tokenizer
        prompts_meta = {"source": cfg.prompts, "sha256": file_sha256(cfg.prompts), "count": len(prompts)}
        answers = {p.index: p.answer for p in prompts if p.answer is not None}
        out.write_prompts(prompts)
        free_model(student)
    if cfg.continuation_depths and not answers:
        raise InputError("--continuation-depths needs prompts with reference answers ('answer' field)",
                         fix="add answers to the prompt file, or drop --continuation-depths")
    correct = novelty.student_correct(rollouts, answers) if answers else None

    lengths = np.array([len(r.response_token_ids) for r in rollouts])
    prompt_pos = {r.prompt_index for r in rollouts}
    n_prompts = max(prompt_pos) + 1
    prompt_ids = {r.prompt_index: r.prompt_id for r in rollouts}
    prompt_N = np.repeat([r.prompt_index for r in rollouts], lengths)
    depth_N = np.concatenate([np.arange(n) for n in lengths])
    edges = metrics.depth_edges_for(cfg.depth_bucket, int(lengths.max()))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    student_query = [student_scores.topk_ids_LK[offsets[i]:offsets[i + 1]] for i in range(len(rollouts))]

    import pandas as pd

    pairs: list[PairResult] = []
    frames = []
    teacher_arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    teacher_query_exact: dict[str, bool] = {}
    template_differs: dict[str, bool] = {}
    for ti, name in enumerate(cfg.teachers):
        slug = teacher_slug(ti, name)
        progress.log(f"loading teacher {name}")
        t0 = time.perf_counter()
        teacher = load_backend_model(cfg.score_backend_used, model_spec(name, cfg), role="teacher")
        load_s = time.perf_counter() - t0
        pair_warnings = check_vocab(student_vocab, teacher.vocab(), name)
        check_top_k(teacher, cfg.top_k, "teacher")
        by_template, pair_templates = _score_templates(cfg, teacher, name, slug, rollouts, teacher_views.get(name),
                                                       student_tok, out, progress, student_query)
        primary = templates.primary_template(cfg.template)
        t_scores, t_timing = by_template[primary]
        if primary != "student":
            t_timing = {**t_timing, "template": primary}
        pair_novelty = Novelty()
        if cfg.continuation_depths:
            progress.log(f"continuation gain of {name} at depths {list(cfg.continuation_depths)}")
            t0 = time.perf_counter()
            pair_novelty = Novelty(continuation=tuple(evidence.continuation_gain(
                teacher, rollouts, correct, answers, cfg.continuation_depths, cfg.max_new_tokens, seed=cfg.seed)))
            t_timing["continuation_seconds"] = time.perf_counter() - t0
        teacher_arrays[name] = (t_scores.topk_ids_LK, t_scores.query_logprobs_LQ)
        # the "scored under the student's template" note only holds when that is the rendering the verdict uses
        template_differs[name] = (primary == "student" and
                                  teacher.info.get("chat_template_hash") != student_info.get("chat_template_hash"))
        info = teacher.info
        free_model(teacher)
        states = metrics.per_state_metrics(
            student_scores.topk_ids_LK, student_scores.topk_logprobs_LK, student_scores.entropy_L,
            student_scores.sampled_logprob_L, t_scores.topk_ids_LK, t_scores.topk_logprobs_LK,
            t_scores.entropy_L, t_scores.query_logprobs_LQ, t_scores.sampled_logprob_L,
        )
        exact = metrics.exact_states(student_scores.entropy_exact_L, t_scores.entropy_exact_L,
                                     t_scores.query_exact_LQ)
        approx = approximations(exact, approximation_how(student_scores, student_info, t_scores, info))
        pair_warnings = list(pair_warnings) + approximation_warnings(approx)
        teacher_query_exact[name] = t_scores.query_exact_LQ is None or bool(t_scores.query_exact_LQ.all())
        agg = metrics.aggregate(states, prompt_N, depth_N, n_prompts, edges, n_boot=cfg.n_boot,
                                seed=cfg.seed, level=cfg.ci_level)
        if "teacher" in by_template and "student" in by_template:
            other_scores, other_timing = by_template["teacher"]
            other_states = metrics.per_state_metrics(
                student_scores.topk_ids_LK, student_scores.topk_logprobs_LK, student_scores.entropy_L,
                student_scores.sampled_logprob_L, other_scores.topk_ids_LK, other_scores.topk_logprobs_LK,
                other_scores.entropy_L, other_scores.query_logprobs_LQ, other_scores.sampled_logprob_L,
            )
            pair_templates.update(templates.compare_renderings(states, other_states, prompt_N, n_prompts,
                                                               n_boot=cfg.n_boot, seed=cfg.seed, level=cfg.ci_level))
            t_timing = {**t_timing, **{f"teacher_template_{k}": v for k, v in other_timing.items()}}
        per_prompt = {}
        for pi in sorted(prompt_pos):
            row = {m: (None if np.isnan(v[pi]) else float(v[pi])) for m, v in agg["per_prompt"].items()}
            row["n_states"] = int(agg["per_prompt_states"][pi])
            per_prompt[prompt_ids[pi]] = row
        pairs.append(PairResult(
            teacher=name, slug=slug, model=info, pooled=agg["pooled"], depth=tuple(agg["depth"]),
            per_prompt=per_prompt, timings={"load_seconds": load_s, **t_timing},
            warnings=tuple(pair_warnings) + tuple(pair_templates.pop("warnings", ())),
            novelty=pair_novelty, templates=pair_templates, approximate=approx,
        ))
        frame = pd.DataFrame({
            "teacher": name,
            "rollout_id": np.repeat([r.rollout_id for r in rollouts], lengths),
            "prompt_id": np.repeat([r.prompt_id for r in rollouts], lengths),
            "position": depth_N,
            "token_id": np.concatenate([r.response_token_ids for r in rollouts]),
            **{m: v.astype(np.float32) for m, v in states.items()},
            # False where a value is an estimate (vLLM scoring; see results.json pairs[].approximate)
            "entropy_exact": exact.get("entropy_gap", np.ones(len(depth_N), dtype=bool)),
            "topk_reverse_kl_exact": exact.get("topk_reverse_kl", np.ones(len(depth_N), dtype=bool)),
        })
        frames.append(frame)

    if cfg.grad_norm:
        pairs = _with_grad_norms(cfg, pairs, rollouts, student_scores, teacher_arrays, progress)
    dist = novelty.distinguishability(student_scores.topk_ids_LK, teacher_arrays) if len(teacher_arrays) > 1 else None
    inexact = [t for t, ok in teacher_query_exact.items() if not ok]
    if dist is not None and inexact:
        warnings.append(
            f"teacher-vs-teacher KL (distinguishability) uses upper bounds for some teacher log-probs at the "
            f"student's top-k ids ({', '.join(inexact)}; see pairs[].approximate.topk_reverse_kl): approximate")
    pairs = _with_verdicts(pairs, thresholds, dist, template_differs)
    ranking = tuple(p.teacher for p in sorted(pairs, key=lambda p: rank_key(
        p.verdict.status, _means(p), p.novelty.continuation)))
    finish = [r.finish_reason for r in rollouts]
    rollout_meta = {
        "count": len(rollouts),
        "prompts": len(prompt_pos),
        "samples_per_prompt": prompts_meta.get("samples_per_prompt", cfg.samples),
        "states": int(lengths.sum()),
        "response_length_mean": float(lengths.mean()),
        "response_length_max": int(lengths.max()),
        "prompt_length_mean": float(np.mean([len(r.prompt_token_ids) for r in rollouts])),
        "finish_reasons": {k: finish.count(k) for k in sorted(set(finish))},
        "with_answers": int(np.isfinite(correct).sum()) if correct is not None else 0,
        "student_accuracy": float(np.nanmean(correct)) if correct is not None else None,
        **sample_timing,
    }
    if rollout_meta["finish_reasons"].get("length", 0) > 0.5 * len(rollouts):
        warnings.append(
            f"{rollout_meta['finish_reasons']['length']} of {len(rollouts)} rollouts hit --max-new-tokens "
            f"{rollout_meta.get('max_new_tokens') or cfg.max_new_tokens}; states deeper than that are not probed"
        )
    timings["total_seconds"] = time.perf_counter() - started
    results = ProbeResults(
        tool_version=__version__, created_at=created_at, config=cfg.to_dict(), environment=environment(),
        student=student_info, prompts=prompts_meta, rollouts=rollout_meta, pairs=tuple(pairs), ranking=ranking,
        timings=timings, warnings=tuple(warnings), thresholds=thresholds.to_dict(), distinguishability=dist,
        gate=gate_outcome(pairs, fail_on),
    )
    if cfg.plan_steps is not None:
        plan = costs.Plan(steps=cfg.plan_steps, batch=cfg.plan_batch, max_tokens=cfg.plan_max_tokens)
        results = replace(results, plan=costs.project_results(plan, results))
    out.write_parquet("states.parquet", pd.concat(frames, ignore_index=True))
    out.write_tokens(token_strings(student_tok, rollouts, [student_scores.topk_ids_LK] +
                                   [ids for ids, _ in teacher_arrays.values()]))
    out.write_results(results)
    return results


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
    """Attach a verdict to every pair. The weak-signal rule compares each teacher's step-0 KL with the strongest
    candidate that has no pattern mismatch, so compatibility is judged first."""
    same = novelty.indistinguishable_pairs(dist, th.indistinguishable_overlap, th.indistinguishable_kl) if dist else {}
    compatible = [p for p in pairs
                  if not any(r.code == "pattern-mismatch" for r in decide(p.teacher, _means(p), th).reasons)]
    strongest = max((p.pooled["topk_reverse_kl"].mean for p in compatible), default=None) if len(pairs) > 1 else None
    out = []
    for p in pairs:
        depth = [(b["start"], b["n_states"], b["metrics"]["overlap_ratio"].mean) for b in p.depth]
        v = decide(p.teacher, _means(p), th, strongest_kl=strongest, depth_overlap=depth,
                   continuation=p.novelty.continuation, indistinguishable_from=same.get(p.teacher),
                   template_differs=template_differs.get(p.teacher, False),
                   template_choice=p.templates if "recommended" in p.templates else None, approximate=p.approximate)
        out.append(replace(p, verdict=v))
    return out


def _with_grad_norms(cfg: ProbeConfig, pairs: list[PairResult], rollouts: list[Rollout], student_scores: ScoreArrays,
                     teacher_arrays: dict, progress: Progress) -> list[PairResult]:
    """Step-0 gradient norm of the OPD top-k loss per teacher: one student backward pass each (opt-in)."""
    progress.log("step-0 gradient norms: loading the student for backward passes")
    # a backward pass needs the model in torch: always the transformers backend, whatever scored the states
    student = load_backend_model("hf", model_spec(cfg.student, cfg), role="student")
    progress.stage("step-0 gradient norms", len(pairs))
    out = []
    for p in pairs:
        t0 = time.perf_counter()
        norm = evidence.step0_grad_norm(student, rollouts, student_scores.topk_ids_LK, teacher_arrays[p.teacher][1],
                                       batch_tokens=cfg.score_batch_tokens)
        approx = dict(p.approximate)
        if "topk_reverse_kl" in approx:  # the loss it differentiates uses the same teacher log-probs
            approx["grad_norm"] = {**approx["topk_reverse_kl"], "exact_fraction": None}
        out.append(replace(p, novelty=replace(p.novelty, grad_norm=norm), approximate=approx,
                           timings={**p.timings, "grad_norm_seconds": time.perf_counter() - t0}))
        progress.advance(1)
    free_model(student)
    return out


def _reused_prompts(reuse_dir: str) -> list[ProbePrompt]:
    """A reused run's prompts (its prompts.jsonl, else its prompt file if still there; [] if neither)."""
    own = Path(reuse_dir) / "prompts.jsonl"
    if own.exists():
        return [ProbePrompt.from_dict(json.loads(line)) for line in own.read_text().splitlines() if line]
    old = json.loads((Path(reuse_dir) / "config.json").read_text())
    if not old.get("prompts") or not Path(old["prompts"]).exists():
        return []
    return load_prompts(old["prompts"], limit=old.get("limit"))


# ---------------------------------------------------------------------------------------------------- templates
TEACHER_TEMPLATE_SUFFIX = "-teacher-template"  # scores/<slug><suffix>: a teacher's scores under its own template


def teacher_renderings(cfg: ProbeConfig, prompts: list[ProbePrompt]) -> dict[str, dict]:
    """With ``--template`` listing ``teacher``: each teacher's own rendering of every probe prompt (token ids by
    prompt index), from its tokenizer alone, so a teacher without a chat template fails before any sampling."""
    if "teacher" not in cfg.template:
        return {}
    from transformers import AutoTokenizer

    from ..prompts import render_prompt_ids
    from ..zoo import resolve

    if not prompts:
        raise InputError("--template teacher needs the probe prompts, and the reused run has no prompts.jsonl",
                         fix="reuse a run made by this opd-probe version, or drop --template teacher")
    views = {}
    for name in cfg.teachers:
        try:
            tok = AutoTokenizer.from_pretrained(resolve(name), trust_remote_code=cfg.trust_remote_code)
        except Exception as e:  # noqa: BLE001 - transformers raises many types here
            raise ModelLoadError(f"could not load the tokenizer of teacher {name!r}: {str(e).splitlines()[0]}",
                                 fix="check the path or hub id (a model folder needs its tokenizer files)") from e
        if not getattr(tok, "chat_template", None):
            if templates.primary_template(cfg.template) == "teacher":
                raise InputError(
                    f"--template teacher: teacher {name} has no chat template, so its own rendering of the prompts "
                    "does not exist",
                    fix="use --template student (the student's rendering, what OPD trainers feed the teacher), or "
                        "set a chat_template in the teacher's tokenizer_config.json")
            views[name] = {"missing": f"teacher {name} has no chat template: it was scored with the student's "
                                      "rendering only"}
            continue
        ids = {p.index: render_prompt_ids(tok, p, use_chat_template=True) for p in prompts}
        views[name] = {"tokenizer": tok, "ids": ids, "prompts": {p.index: p for p in prompts}}
    return views


def _score_templates(cfg: ProbeConfig, teacher, name: str, slug: str, rollouts: list[Rollout], view: dict | None,
                     student_tok, out: OutDir, progress: Progress, query: list[np.ndarray]) -> tuple[dict, dict]:
    """Score the rollouts with ``teacher`` under each rendering of ``cfg.template``: the student's prompt ids as
    sampled, and/or the teacher's own rendering with the same response ids. Returns ({template: (ScoreArrays,
    timing)}, the pair's ``templates`` record without the comparison numbers)."""
    by_template: dict[str, tuple] = {}
    info: dict = {}
    if "student" in cfg.template:
        check_teacher_context(teacher, rollouts, name)
        by_template["student"] = score_rollouts(teacher, rollouts, cfg.top_k, slug, out, cfg, progress, query=query)
    if "teacher" not in cfg.template:
        return by_template, info
    info = {"compared": list(cfg.template), "primary": templates.primary_template(cfg.template)}
    if view is None or "missing" in view:
        note = (view or {}).get("missing", f"teacher {name}: no rendering with its own template")
        return by_template, {**info, "unavailable": note, "warnings": [note]}
    tok = view["tokenizer"]
    own = [replace(r, prompt_token_ids=tuple(view["ids"][r.prompt_index])) for r in rollouts]
    differing = sorted({r.prompt_index for r, o in zip(rollouts, own) if r.prompt_token_ids != o.prompt_token_ids})
    first = rollouts[0]
    example = view["prompts"][first.prompt_index]
    student_text = tok.decode(list(first.prompt_token_ids), skip_special_tokens=False)
    teacher_text = tok.decode(list(view["ids"][first.prompt_index]), skip_special_tokens=False)
    user_text = next((m["content"] for m in reversed(example.as_messages()) if m["role"] == "user"), "")
    specials = sorted(set(getattr(tok, "all_special_tokens", [])) | set(tok.get_added_vocab()))
    info.update({
        "prompts_differing": len(differing), "prompts": len({r.prompt_index for r in rollouts}),
        "student_template_hash": template_hash(student_tok) if cfg.chat_template else None,
        "teacher_template_hash": template_hash(tok),
        "student_rendering": "chat template" if cfg.chat_template else "plain text (--no-chat-template)",
        "example": {"prompt_id": first.prompt_id, "student": student_text, "teacher": teacher_text},
        "differences": templates.describe_differences(
            student_text, teacher_text, user_text=user_text, special_tokens=specials,
            student_source=getattr(student_tok, "chat_template", None) if cfg.chat_template else None,
            teacher_source=tok.chat_template),
        "diff": templates.line_diff(student_text, teacher_text),
    })
    if not differing and "student" in by_template:
        # the same token ids: the teacher's scores are the ones just computed, no second pass
        info["identical"] = True
        by_template["teacher"] = (by_template["student"][0], {"scoring_seconds": 0.0, "identical_rendering": True})
        return by_template, info
    info["identical"] = not differing
    check_teacher_context(teacher, own, name)
    tt_slug = slug + TEACHER_TEMPLATE_SUFFIX if "student" in cfg.template else slug
    by_template["teacher"] = score_rollouts(teacher, own, cfg.top_k, tt_slug, out, cfg, progress, query=query)
    if tt_slug != slug:
        info["scores_dir"] = f"scores/{tt_slug}"
    return by_template, info


# ---------------------------------------------------------------------------------------------------- approximations
_HOW_FALLBACK = {"entropy": "estimated from top-K' log-probs (see docs/vllm.md)",
                 "query": "teacher log-probs outside its top-K' replaced by an upper bound (see docs/vllm.md)"}


def approximations(exact: dict[str, np.ndarray], how: dict[str, str]) -> dict:
    """metric -> {"exact_fraction", "how"} for every metric with an estimated state; {} when all are exact.

    ``how``: {"entropy": ..., "query": ...}, how the backend that produced the estimates made them.
    """
    out = {}
    for name, mask in exact.items():
        key = "query" if name in metrics.QUERY_METRICS else "entropy"
        out[name] = {"exact_fraction": float(np.mean(mask)) if mask.size else 1.0,
                     "how": how.get(key) or _HOW_FALLBACK[key]}
    return out


def approximation_how(student: ScoreArrays, student_info: dict, teacher: ScoreArrays, teacher_info: dict) -> dict:
    """How each estimate in these two score sets was made, from the info of the backend that made it."""
    how = {}
    for scores, info in ((student, student_info), (teacher, teacher_info)):
        if scores.entropy_exact_L is not None and not scores.entropy_exact_L.all():
            how.setdefault("entropy", (info.get("approximations") or {}).get("entropy"))
    if teacher.query_exact_LQ is not None and not teacher.query_exact_LQ.all():
        how["query"] = (teacher_info.get("approximations") or {}).get("query")
    return {k: v for k, v in how.items() if v}


def approximation_warnings(approx: dict) -> list[str]:
    """One line per kind of estimate, naming the metrics it affects and the way to exact values."""
    lines = []
    ent = [m for m in approx if m in metrics.ENTROPY_METRICS]
    if ent:
        lines.append(f"approximate: {', '.join(ent)} ({approx[ent[0]]['how']}); --exact-entropy scores with the "
                     "transformers scorer for exact values")
    for m in metrics.QUERY_METRICS:
        if m in approx:
            lines.append(f"approximate: {m} is a lower bound at {1 - approx[m]['exact_fraction']:.0%} of states "
                         f"({approx[m]['how']}); raise --vllm-logprobs, or use --score-backend hf for exact values")
    return lines
