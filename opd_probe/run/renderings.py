"""`compare --template`: the prompt renderings the teachers score the student's responses under.

``student`` is the student's chat template, as sampled (what OPD trainers feed the teacher); ``teacher`` is each
teacher's own rendering of the same prompt with the same response ids; with both, each pair gets the comparison
and a recommendation (templates.py, pure; docs/recipe.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from .. import templates
from ..backends.base import ModelSpec
from ..backends.loading import load_tokenizer, resolve_model_path
from ..errors import InputError
from ..prompts import render_prompt_ids, template_hash
from ..rundir import OutDir
from ..types import ProbePrompt, Rollout
from .stages import Progress, check_teacher_context, score_rollouts

TEACHER_TEMPLATE_SUFFIX = "-teacher-template"  # scores/<slug><suffix>: a teacher's scores under its own template


def teacher_renderings(template: Sequence[str], teachers: Sequence[ModelSpec],
                       prompts: list[ProbePrompt]) -> dict[str, dict]:
    """With ``template`` listing ``teacher``: each teacher's own rendering of every probe prompt (token ids by
    prompt index), from its tokenizer alone, so a teacher without a chat template fails before any sampling.
    Keyed by the teacher's name (its spec's path)."""
    if "teacher" not in template:
        return {}
    if not prompts:
        raise InputError("--template teacher needs the probe prompts, and the reused run has no prompts.jsonl",
                         fix="reuse a run made by this opd-probe version, or drop --template teacher")
    views = {}
    for spec in teachers:
        name = spec.path
        tok = load_tokenizer(resolve_model_path(spec, "teacher"), spec, "teacher")
        if not getattr(tok, "chat_template", None):
            if templates.primary_template(template) == "teacher":
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


def score_templates(teacher, name: str, slug: str, rollouts: list[Rollout], view: dict | None, student_tok,
                    out: OutDir, progress: Progress, query: list[np.ndarray], *, template: Sequence[str], k: int,
                    budget: int, chat_template: bool) -> tuple[dict, dict]:
    """Score the rollouts with ``teacher`` under each rendering of ``template``: the student's prompt ids as
    sampled (``chat_template``: whether the student's were from its chat template), and/or the teacher's own
    rendering with the same response ids. Returns ({template: (ScoreArrays, timing)}, the pair's ``templates``
    record without the comparison numbers)."""
    by_template: dict[str, tuple] = {}
    info: dict = {}
    if "student" in template:
        check_teacher_context(teacher, rollouts, name)
        by_template["student"] = score_rollouts(teacher, rollouts, k, budget, slug, out, progress, query=query)
    if "teacher" not in template:
        return by_template, info
    info = {"compared": list(template), "primary": templates.primary_template(template)}
    if view is None or "missing" in view:
        note = (view or {}).get("missing", f"teacher {name}: no rendering with its own template")
        return by_template, {**info, "unavailable": note, "warnings": [note]}
    own = [replace(r, prompt_token_ids=tuple(view["ids"][r.prompt_index])) for r in rollouts]
    differing = sorted({r.prompt_index for r, o in zip(rollouts, own) if r.prompt_token_ids != o.prompt_token_ids})
    info.update(_rendering_record(rollouts, view, differing, student_tok, chat_template))
    if not differing and "student" in by_template:
        # the same token ids: the teacher's scores are the ones just computed, no second pass
        info["identical"] = True
        by_template["teacher"] = (by_template["student"][0], {"scoring_seconds": 0.0, "identical_rendering": True})
        return by_template, info
    info["identical"] = not differing
    check_teacher_context(teacher, own, name)
    tt_slug = slug + TEACHER_TEMPLATE_SUFFIX if "student" in template else slug
    by_template["teacher"] = score_rollouts(teacher, own, k, budget, tt_slug, out, progress, query=query)
    if tt_slug != slug:
        info["scores_dir"] = f"scores/{tt_slug}"
    return by_template, info


def _rendering_record(rollouts: list[Rollout], view: dict, differing: list[int], student_tok,
                      chat_template: bool) -> dict:
    """How the two renderings differ: counts, template hashes, the first rollout's prompt both ways, the
    described differences and a line diff."""
    tok = view["tokenizer"]
    first = rollouts[0]
    example = view["prompts"][first.prompt_index]
    student_text = tok.decode(list(first.prompt_token_ids), skip_special_tokens=False)
    teacher_text = tok.decode(list(view["ids"][first.prompt_index]), skip_special_tokens=False)
    user_text = next((m["content"] for m in reversed(example.as_messages()) if m["role"] == "user"), "")
    specials = sorted(set(getattr(tok, "all_special_tokens", [])) | set(tok.get_added_vocab()))
    return {
        "prompts_differing": len(differing), "prompts": len({r.prompt_index for r in rollouts}),
        "student_template_hash": template_hash(student_tok) if chat_template else None,
        "teacher_template_hash": template_hash(tok),
        "student_rendering": "chat template" if chat_template else "plain text (--no-chat-template)",
        "example": {"prompt_id": first.prompt_id, "student": student_text, "teacher": teacher_text},
        "differences": templates.describe_differences(
            student_text, teacher_text, user_text=user_text, special_tokens=specials,
            student_source=getattr(student_tok, "chat_template", None) if chat_template else None,
            teacher_source=tok.chat_template),
        "diff": templates.line_diff(student_text, teacher_text),
    }
