"""compare's first stage: the student side every teacher is scored against, either sampled and scored here or
taken from an earlier run (--reuse: its rollouts and student scores, no model loaded).

Both paths check what they can before any weight loads: the prompt set (probe.py loads it before anything is
written), the teachers' own renderings under ``--template teacher``, the reused run's student and top-k.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..backends import load_backend_model
from ..backends.base import ScoreArrays
from ..backends.loading import load_tokenizer, resolve_model_path
from ..config import ProbeConfig
from ..errors import InputError, ModelLoadError
from ..prompts import load_prompts
from ..rundir import OutDir
from ..types import ProbePrompt, Rollout
from .renderings import teacher_renderings
from .stages import (Progress, check_student_context, file_sha256, free_model, load_student, model_spec,
                     sample_rollouts, sampling_settings, score_rollouts)

STUDENT_SLUG = "student"


@dataclass(frozen=True)
class StudentSide:
    """The student's rollouts and scores, with what the rest of the run reads about the student and the prompts."""

    prompts: list[ProbePrompt]  # [] when a reused run kept neither its prompts.jsonl nor its prompt file
    rollouts: list[Rollout]
    scores: ScoreArrays
    info: dict  # the student model's info (results.json "student")
    vocab: dict[str, int]
    tokenizer: object
    prompts_meta: dict  # results.json "prompts"
    sample_timing: dict  # sampling (and student scoring) figures for results.json "rollouts"
    answers: dict[int, str]  # prompt index -> reference answer
    teacher_views: dict  # teacher name -> its own rendering (--template teacher; renderings.teacher_renderings)


def probe_prompts(cfg: ProbeConfig) -> list[ProbePrompt] | None:
    """The probe prompts, validated before any model loads; None with --reuse (the reused run's are used)."""
    if cfg.reuse is not None:
        return None
    if cfg.prompts is None:
        raise InputError("no prompt set given", fix="pass --prompts FILE (e.g. sample_prompts/math.jsonl)")
    return load_prompts(cfg.prompts, limit=cfg.limit)


def _teacher_views(cfg: ProbeConfig, prompts: list[ProbePrompt]) -> dict:
    return teacher_renderings(cfg.template, [model_spec(name, cfg) for name in cfg.teachers], prompts)


def fresh_student_side(cfg: ProbeConfig, prompts: list[ProbePrompt], out: OutDir, progress: Progress,
                       timings: dict) -> StudentSide:
    """Sample the student on every prompt and score its rollouts (both saved in ``out`` as they finish)."""
    teacher_views = _teacher_views(cfg, prompts)  # before sampling: a teacher without a template fails fast
    progress.log(f"loading student {cfg.student} ({cfg.rollout_backend_used})")
    t0 = time.perf_counter()
    student = load_student(cfg.rollout_backend_used, model_spec(cfg.student, cfg), cfg.top_k)
    timings["student_load_seconds"] = time.perf_counter() - t0
    rendered = [student.render(p, cfg.chat_template) for p in prompts]
    check_student_context(student, prompts, rendered, cfg.max_new_tokens)
    rollouts, sample_timing = sample_rollouts(student, prompts, rendered, sampling_settings(cfg, cfg.samples), out,
                                              progress)
    sample_timing["max_new_tokens"] = cfg.max_new_tokens
    if cfg.score_backend_used != cfg.rollout_backend_used:  # mixed backends: the scorer loads the student too
        free_model(student)
        progress.log(f"loading student {cfg.student} for scoring ({cfg.score_backend_used})")
        t0 = time.perf_counter()
        student = load_backend_model(cfg.score_backend_used, model_spec(cfg.student, cfg), role="student")
        timings["student_scorer_load_seconds"] = time.perf_counter() - t0
    scores, score_timing = score_rollouts(student, rollouts, cfg.top_k, cfg.score_batch_tokens, STUDENT_SLUG, out,
                                          progress)
    sample_timing.update({f"student_{k}": v for k, v in score_timing.items()})
    side = StudentSide(
        prompts=prompts, rollouts=rollouts, scores=scores, info=student.info, vocab=student.vocab(),
        tokenizer=student.tokenizer, sample_timing=sample_timing,
        prompts_meta={"source": cfg.prompts, "sha256": file_sha256(cfg.prompts), "count": len(prompts)},
        answers={p.index: p.answer for p in prompts if p.answer is not None}, teacher_views=teacher_views)
    out.write_prompts(prompts)
    free_model(student)
    return side


def reused_student_side(cfg: ProbeConfig, out: OutDir, progress: Progress) -> StudentSide:
    """--reuse: an earlier run's rollouts and student scores (copied into ``out``), and the student's tokenizer."""
    rollouts, student_info, prompts_meta, sample_timing = _copy_reused_run(cfg, out)
    prompts = _reused_prompts(cfg.reuse)
    teacher_views = _teacher_views(cfg, prompts)
    spec = model_spec(cfg.student, cfg)
    try:
        tokenizer = load_tokenizer(resolve_model_path(spec, "student"), spec, "student")
    except ModelLoadError as e:
        raise ModelLoadError(e.message, fix=f"{e.fix} (--reuse needs the student's tokenizer for the vocabulary "
                                            "check)") from e
    scores, _ = score_rollouts(None, rollouts, cfg.top_k, cfg.score_batch_tokens, STUDENT_SLUG, out, progress)
    return StudentSide(
        prompts=prompts, rollouts=rollouts, scores=scores, info=student_info, vocab=tokenizer.get_vocab(),
        tokenizer=tokenizer, prompts_meta=prompts_meta, sample_timing=sample_timing,
        answers={p.index: p.answer for p in prompts if p.answer is not None}, teacher_views=teacher_views)


def _copy_reused_run(cfg: ProbeConfig, out: OutDir) -> tuple[list[Rollout], dict, dict, dict]:
    """Copy a previous run's prompts, rollouts and student scores into ``out``; check they fit this config.
    Returns (rollouts, student info, prompts meta, sample timing)."""
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


def _reused_prompts(reuse_dir: str) -> list[ProbePrompt]:
    """A reused run's prompts (its prompts.jsonl, else its prompt file if still there; [] if neither)."""
    own = Path(reuse_dir) / "prompts.jsonl"
    if own.exists():
        return [ProbePrompt.from_dict(json.loads(line)) for line in own.read_text().splitlines() if line]
    old = json.loads((Path(reuse_dir) / "config.json").read_text())
    if not old.get("prompts") or not Path(old["prompts"]).exists():
        return []
    return load_prompts(old["prompts"], limit=old.get("limit"))
