"""Pure: compare the student's and the teacher's chat templates at the same student states (paper §5.2).

The student samples with its own template (the states OPD trains on). ``compare --template student,teacher`` has
each teacher score the same response token ids twice: after the prompt as the student's template renders it (what
OPD trainers feed the teacher by default), and after the prompt as the teacher's own template renders it (what a
trainer's template switch, e.g. verl's reward-model ``input_tokenizer``, feeds it). This module decides which
rendering aligns the teacher better with the student and describes how the two renderings differ.
No models, no torch: it works on per-state metric arrays and rendered texts.
"""

from __future__ import annotations

import difflib

import numpy as np

from .metrics import bootstrap_weights, group_sums, pooled_estimate

TEMPLATES = ("student", "teacher")
# Metrics compared between the two renderings (all have one finite value per state, so the paired difference is
# defined at every state); the first two decide.
COMPARED = ("overlap_mass_student", "topk_reverse_kl", "overlap_ratio", "overlap_mass_teacher", "entropy_gap",
            "teacher_entropy")


def parse_templates(text: str | tuple | list) -> tuple[str, ...]:
    """'student', 'teacher', 'student,teacher' -> a tuple in canonical order; ValueError on anything else."""
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else [str(t).strip() for t in text]
    items = [t for t in items if t]
    bad = [t for t in items if t not in TEMPLATES]
    if not items or bad:
        raise ValueError(f"unknown template {', '.join(bad) or '(none)'}")
    return tuple(t for t in TEMPLATES if t in items)


def primary_template(templates: tuple[str, ...]) -> str:
    """The rendering the verdicts use: the student's when it is listed (what OPD trainers feed the teacher by
    default), else the teacher's."""
    return "student" if "student" in templates else "teacher"


def compare_renderings(
    student_states: dict[str, np.ndarray],
    teacher_states: dict[str, np.ndarray],
    prompt_N: np.ndarray,
    n_prompts: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Pooled metrics under each rendering and their paired difference (teacher rendering minus student
    rendering, same states), with a bootstrap CI over prompts; and the recommendation.

    Rule (docs/recipe.md): the rendering with the higher student overlap mass, when the CI of the difference
    excludes 0 (mass is the faithful compatibility signal when it and the ratio disagree, paper §5.2); else the
    one with the lower top-k reverse KL, when that difference's CI excludes 0; else no measurable difference, and
    the student's rendering (no change to the trainer) is recommended.
    """
    prompt_N = np.asarray(prompt_N, dtype=np.int64)
    weights = bootstrap_weights(n_prompts, n_boot, seed)
    pooled: dict[str, dict] = {"student": {}, "teacher": {}}
    delta: dict[str, dict] = {}
    for m in COMPARED:
        s = np.asarray(student_states[m], dtype=np.float64)
        t = np.asarray(teacher_states[m], dtype=np.float64)
        for name, v in (("student", s), ("teacher", t)):
            sums, counts = group_sums(v, prompt_N, n_prompts)
            pooled[name][m] = pooled_estimate(sums, counts, weights, level).to_dict()
        sums, counts = group_sums(t - s, prompt_N, n_prompts)
        delta[m] = pooled_estimate(sums, counts, weights, level).to_dict()
    recommended, decided_by, reason = "student", None, (
        "no measurable difference at the student's states (the CIs of the mass and KL differences include 0): "
        "keep the student's template, which trainers use by default")
    for metric, better_up, what in (("overlap_mass_student", True, "student overlap mass"),
                                     ("topk_reverse_kl", False, "top-k reverse KL")):
        d = delta[metric]
        if d["ci_low"] is None or d["ci_high"] is None or not np.isfinite([d["ci_low"], d["ci_high"]]).all():
            continue
        if d["ci_low"] > 0 or d["ci_high"] < 0:
            teacher_better = (d["mean"] > 0) == better_up
            recommended, decided_by = ("teacher" if teacher_better else "student"), metric
            reason = (f"the {recommended}'s template gives the {'higher' if better_up else 'lower'} {what}: "
                      f"teacher minus student rendering {d['mean']:+.4f} "
                      f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]")
            break
    return {"pooled": pooled, "delta": delta, "recommended": recommended, "decided_by": decided_by,
            "reason": reason}


# ------------------------------------------------------------------------------------------------ differences
def _before_after(text: str, user_text: str) -> tuple[str, str] | None:
    i = text.find(user_text) if user_text else -1
    return (text[:i], text[i + len(user_text):]) if i >= 0 else None


def _short(s: str, n: int = 80) -> str:
    r = repr(s)
    return r if len(r) <= n else r[: n - 4] + "...'"


def describe_differences(
    student_text: str,
    teacher_text: str,
    *,
    user_text: str = "",
    special_tokens: list[str] | tuple[str, ...] = (),
    student_source: str | None = None,
    teacher_source: str | None = None,
) -> list[str]:
    """Human-readable differences between two renderings of the same prompt: system turn, thinking toggles,
    special tokens, generation prompt. ``user_text``: the prompt's last user message, to find where the
    template's own text starts and ends. ``*_source``: the chat templates' Jinja source (for switches such as
    ``enable_thinking`` that a rendering with the defaults does not show). Empty when the texts are equal."""
    if student_text == teacher_text:
        return []
    out = []
    parts = {"student": _before_after(student_text, user_text), "teacher": _before_after(teacher_text, user_text)}
    texts = {"student": student_text, "teacher": teacher_text}
    has_system = {k: "system" in (p[0] if p else texts[k]).lower() for k, p in parts.items()}
    if has_system["teacher"] != has_system["student"]:
        who, other = ("teacher", "student") if has_system["teacher"] else ("student", "teacher")
        out.append(f"system prompt: the {who}'s template adds a system turn the {other}'s lacks")
    think = {k: "<think>" in t for k, t in texts.items()}
    if think["teacher"] != think["student"]:
        who = "teacher" if think["teacher"] else "student"
        out.append(f"thinking: the {who}'s rendering contains a <think> block (a thinking-mode toggle)")
    for who, src in (("student", student_source), ("teacher", teacher_source)):
        if src and "enable_thinking" in src:
            out.append(f"thinking: the {who}'s template has an enable_thinking switch (rendered with its default)")
    for who, other in (("student", "teacher"), ("teacher", "student")):
        only = [t for t in special_tokens if t and t in texts[who] and t not in texts[other]]
        if only:
            out.append(f"special tokens only in the {who}'s rendering: {', '.join(sorted(set(only)))}")
    if parts["student"] and parts["teacher"]:
        if parts["student"][1] != parts["teacher"][1]:
            out.append(f"generation prompt (after the user text): student {_short(parts['student'][1])}, "
                       f"teacher {_short(parts['teacher'][1])}")
        if parts["student"][0] != parts["teacher"][0] and not any(x.startswith("system") for x in out):
            out.append(f"text before the user message: student {_short(parts['student'][0])}, "
                       f"teacher {_short(parts['teacher'][0])}")
    if not out:
        out.append("the renderings differ (see the line diff)")
    return out


def line_diff(student_text: str, teacher_text: str, limit: int = 40) -> list[str]:
    """A unified line diff (student -> teacher), at most ``limit`` lines."""
    lines = list(difflib.unified_diff(student_text.splitlines(), teacher_text.splitlines(),
                                      "student template", "teacher template", n=1, lineterm=""))
    return lines[:limit] + ([f"... {len(lines) - limit} more lines"] if len(lines) > limit else [])
