"""opd_probe.templates (pure): parsing --template, the rendering comparison rule, and describing template differences."""

from __future__ import annotations

import numpy as np
import pytest

from opd_probe import templates



def test_parse_templates():
    assert templates.parse_templates("student") == ("student",)
    assert templates.parse_templates("teacher, student") == ("student", "teacher")
    assert templates.primary_template(("teacher",)) == "teacher"
    assert templates.primary_template(("student", "teacher")) == "student"
    for bad in ("", "both", "student,tutor"):
        with pytest.raises(ValueError):
            templates.parse_templates(bad)


def _render_states(mass, kl, n=4):
    st = {m: np.full(n, 0.5) for m in templates.COMPARED}
    st["overlap_mass_student"] = np.asarray(mass, float)
    st["topk_reverse_kl"] = np.asarray(kl, float)
    return st


PROMPT_N = np.array([0, 0, 1, 1])


def test_teacher_template_with_higher_mass_is_recommended():
    s = _render_states([0.9, 0.9, 0.8, 0.8], [0.2] * 4)
    t = _render_states([0.95, 0.95, 0.85, 0.85], [0.3] * 4)  # more mass, even with a larger KL: mass decides
    out = templates.compare_renderings(s, t, PROMPT_N, 2, n_boot=50)
    assert out["recommended"] == "teacher" and out["decided_by"] == "overlap_mass_student"
    assert out["delta"]["overlap_mass_student"]["mean"] == pytest.approx(0.05)
    assert out["pooled"]["teacher"]["overlap_mass_student"]["mean"] == pytest.approx(0.9)


def test_kl_decides_when_mass_does_not_differ():
    s = _render_states([0.9] * 4, [0.2, 0.2, 0.3, 0.3])
    t = _render_states([0.9] * 4, [0.4, 0.4, 0.5, 0.5])
    out = templates.compare_renderings(s, t, PROMPT_N, 2, n_boot=50)
    assert out["recommended"] == "student" and out["decided_by"] == "topk_reverse_kl"
    assert out["delta"]["topk_reverse_kl"]["mean"] == pytest.approx(0.2)


def test_no_difference_keeps_the_student_template():
    s = _render_states([0.9, 0.8, 0.9, 0.8], [0.2, 0.3, 0.2, 0.3])
    out = templates.compare_renderings(s, s, PROMPT_N, 2, n_boot=50)
    assert out["recommended"] == "student" and out["decided_by"] is None
    assert "no measurable difference" in out["reason"]


QWEN_LIKE = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
             "<|im_start|>assistant\n<think>\n\n</think>\n\n")
PLAIN = "<|user|>\nWhat is 2+2?<|endoftext|>\n<|assistant|>\n"


def test_describe_differences_names_system_thinking_and_special_tokens():
    specials = ["<|im_start|>", "<|im_end|>", "<|user|>", "<|assistant|>", "<|endoftext|>"]
    diffs = templates.describe_differences(PLAIN, QWEN_LIKE, user_text="What is 2+2?", special_tokens=specials,
                                           teacher_source="{% if enable_thinking %}...{% endif %}")
    text = "\n".join(diffs)
    assert "the teacher's template adds a system turn" in text
    assert "the teacher's rendering contains a <think> block" in text
    assert "teacher's template has an enable_thinking switch" in text
    assert "special tokens only in the student's rendering: <|assistant|>, <|endoftext|>, <|user|>" in text
    assert "special tokens only in the teacher's rendering: <|im_end|>, <|im_start|>" in text
    assert "generation prompt" in text
    assert templates.describe_differences(PLAIN, PLAIN, user_text="What is 2+2?") == []
    diff = templates.line_diff(PLAIN, QWEN_LIKE)
    assert diff[0].startswith("--- student template") and any(line.startswith("+<think>") for line in diff)
