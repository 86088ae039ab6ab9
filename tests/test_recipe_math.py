"""The recipe's pure core (issue 8): prompt selection, cost projection, template comparison. Hand-derived answers;
no models."""

from __future__ import annotations

import math

import numpy as np
import json

import pytest

from opd_probe import costs, selection, templates


# ------------------------------------------------------------------------------------------------ selection
@pytest.mark.parametrize("keep,frac,want", [
    (10, 0.3, (7, 3)),          # 10 x 0.3 is 3 exactly (as a float product it is 3.0000000000000004)
    (5000, 0.3, (3500, 1500)),
    (5, 0.5, (2, 3)),           # 2.5 rounds half up
    (3, 0.1, (3, 0)),           # 0.3 rounds to 0
    (7, 1.0, (0, 7)),
    (7, 0.0, (7, 0)),
    (0, 0.5, (0, 0)),
    (3, 0.5, (1, 2)),           # 1.5 -> 2
    (100, 0.07, (93, 7)),       # 0.07 * 100 = 7.000000000000001 as floats
])
def test_split_counts_are_exact(keep, frac, want):
    assert selection.split_counts(keep, frac) == want


@pytest.mark.parametrize("frac", [-0.1, 1.01, float("nan")])
def test_split_counts_rejects_fractions_outside_0_1(frac):
    with pytest.raises(ValueError):
        selection.split_counts(10, frac)


def _states(**cols):
    base = {m: np.zeros(len(next(iter(cols.values())))) for m in selection.SCORE_METRICS}
    base.update({k: np.asarray(v, dtype=float) for k, v in cols.items()})
    return base


def test_prompt_means_pool_each_prompts_states():
    # prompt 0: states 0,1 (mass .9, .7 -> .8); prompt 1: state 2 (.5); prompt 2: no state
    states = _states(overlap_mass_student=[0.9, 0.7, 0.5], topk_reverse_kl=[0.1, 0.3, 2.0])
    means = selection.prompt_means(states, np.array([0, 0, 1]), 3)
    np.testing.assert_allclose(means["overlap_mass_student"][:2], [0.8, 0.5])
    np.testing.assert_allclose(means["topk_reverse_kl"][:2], [0.2, 2.0])
    assert math.isnan(means["overlap_mass_student"][2])
    assert means["n_states"].tolist() == [2, 1, 0]


def test_select_keeps_the_best_and_draws_ood_from_the_rest():
    score = np.array([0.9, 0.5, np.nan, 0.7, 0.9, 0.1])
    # eligible ranked (ties in pool order): 0 (.9), 4 (.9), 3 (.7), 1 (.5), 5 (.1); position 2 has no score
    s = selection.select(score, keep=3, ood_fraction=1 / 3, seed=0)
    assert s.aligned == (0, 4)
    assert len(s.ood) == 1 and s.ood[0] in (1, 3, 5)
    assert s.kept == tuple(sorted(s.aligned + s.ood))
    assert s.rank == {0: 1, 4: 2, 3: 3, 1: 4, 5: 5}
    assert 2 not in s.kept


def test_select_is_deterministic_under_a_seed_and_the_seed_matters():
    rng = np.random.default_rng(123)
    score = rng.random(200)
    a = selection.select(score, keep=50, ood_fraction=0.4, seed=7)
    b = selection.select(score, keep=50, ood_fraction=0.4, seed=7)
    assert a == b
    others = {selection.select(score, keep=50, ood_fraction=0.4, seed=s).ood for s in range(5)}
    assert len(others) > 1


@pytest.mark.parametrize("keep,frac", [(1, 0.0), (1, 1.0), (17, 0.3), (40, 0.25), (60, 0.5), (60, 0.99)])
def test_ood_fraction_is_respected_exactly(keep, frac):
    score = np.random.default_rng(0).random(60)
    s = selection.select(score, keep=keep, ood_fraction=frac, seed=1)
    n_aligned, n_ood = selection.split_counts(keep, frac)
    assert (len(s.aligned), len(s.ood)) == (n_aligned, n_ood)
    assert len(set(s.aligned) | set(s.ood)) == keep
    # every aligned prompt ranks above every prompt left out of the aligned set
    order = selection.rank_order(score, True)
    assert set(s.aligned) == set(order[:n_aligned].tolist())


def test_select_by_kl_prefers_small_kl():
    s = selection.select(np.array([0.3, 0.1, 0.2]), keep=2, ood_fraction=0.0, seed=0, higher_is_better=False)
    assert s.aligned == (1, 2)


def test_select_refuses_more_than_the_eligible_prompts():
    with pytest.raises(ValueError, match="only 2"):
        selection.select(np.array([0.3, np.nan, 0.2]), keep=3, ood_fraction=0.0, seed=0)


def test_summarize_means_over_prompts():
    scores = {m: np.array([0.2, 0.4, np.nan, 1.0]) for m in selection.SCORE_METRICS}
    out = selection.summarize(scores, {"pool": [0, 1, 2, 3], "kept": [1, 3], "none": []})
    assert out["pool"]["prompts"] == 4 and out["pool"]["overlap_ratio"] == pytest.approx((0.2 + 0.4 + 1.0) / 3)
    assert out["kept"]["overlap_mass_student"] == pytest.approx(0.7)
    assert out["none"] == {"prompts": 0, **{m: None for m in selection.SCORE_METRICS}}


# ------------------------------------------------------------------------------------------------ costs
def _project(**kw):
    args = dict(response_length_mean=50.0, prompt_length_mean=20.0, probe_max_new_tokens=64, truncated_share=0.0,
                sampling_tokens_per_second=10.0, scoring_tokens_per_second={"T": 100.0}, device="CPU")
    args.update(kw)
    return costs.project(costs.Plan(steps=10, batch=4, max_tokens=100), **args)


def test_cost_projection_by_hand():
    p = _project()
    # 10 steps x 4 sequences = 40 sequences; responses 40 x 50 = 2000 (low) or 40 x 100 = 4000 (high) tokens;
    # the teacher scores prompt + response: + 40 x 20 = 800 tokens
    assert p.sequences == 40
    assert p.response_tokens == costs.Range(2000.0, 4000.0)
    assert p.scored_tokens == costs.Range(2800.0, 4800.0)
    assert p.sampling.seconds == costs.Range(200.0, 400.0)  # at 10 tokens/s
    assert p.sampling.hours.high == pytest.approx(400 / 3600)
    assert p.teachers["T"].seconds == costs.Range(28.0, 48.0)  # at 100 tokens/s
    text = " ".join(p.assumptions)
    assert "same hardware" in text and "50.0 tokens" in text and "--plan-max-tokens 100" in text
    assert "not modelled" in text


def test_probe_mean_longer_than_the_plan_is_capped():
    p = _project(response_length_mean=150.0)
    assert p.response_tokens == costs.Range(4000.0, 4000.0)
    assert "capped" in " ".join(p.assumptions)


def test_truncated_probe_and_missing_rates_are_said():
    p = _project(truncated_share=0.5, sampling_tokens_per_second=None, scoring_tokens_per_second={"T": None})
    assert p.sampling.seconds == costs.Range(None, None)
    assert p.teachers["T"].seconds == costs.Range(None, None)
    text = " ".join(p.assumptions)
    assert "50% of the probe's rollouts hit its --max-new-tokens 64" in text and "lower bound" in text
    assert "sampling time is unknown" in text and "teacher T" in text


def test_plan_rejects_non_positive_values():
    with pytest.raises(ValueError):
        costs.Plan(steps=0, batch=1, max_tokens=1)


# ------------------------------------------------------------------------------------------------ templates
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


def test_projection_round_trips_through_json():
    p = _project(sampling_tokens_per_second=None)
    d = json.loads(json.dumps(p.to_dict()))
    assert d["sampling"] == {"tokens_per_second": None, "seconds": {"low": None, "high": None},
                             "hours": {"low": None, "high": None}}
    assert d["teachers"]["T"]["hours"] == {"low": pytest.approx(28 / 3600), "high": pytest.approx(48 / 3600)}
    assert costs.Projection.from_dict(d) == p
