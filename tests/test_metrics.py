"""Golden tests for opd_probe.metrics on hand-made distributions with hand-derived answers."""

import math

import numpy as np
import pytest

from opd_probe import metrics


def states_from_full(p_NV, q_NV, k, sampled_N=None):
    """Per-state metrics from full distributions, the way the scorer reduces them (top-k sorted descending)."""
    p = np.asarray(p_NV, dtype=np.float64)
    q = np.asarray(q_NV, dtype=np.float64)
    lp, lq = np.log(p), np.log(q)
    s_ids = np.argsort(-p, axis=1, kind="stable")[:, :k]
    t_ids = np.argsort(-q, axis=1, kind="stable")[:, :k]
    rows = np.arange(p.shape[0])[:, None]
    sampled = np.zeros(p.shape[0], dtype=int) if sampled_N is None else np.asarray(sampled_N)
    r = np.arange(p.shape[0])
    return metrics.per_state_metrics(
        student_topk_ids_NK=s_ids,
        student_topk_logprobs_NK=lp[rows, s_ids],
        student_entropy_N=-(p * lp).sum(1),
        student_sampled_logprob_N=lp[r, sampled],
        teacher_topk_ids_NK=t_ids,
        teacher_topk_logprobs_NK=lq[rows, t_ids],
        teacher_entropy_N=-(q * lq).sum(1),
        teacher_query_logprobs_NK=lq[rows, s_ids],
        teacher_sampled_logprob_N=lq[r, sampled],
    )


def test_identical_distributions():
    p = [[0.5, 0.3, 0.15, 0.05]]
    m = states_from_full(p, p, k=2)
    assert m["overlap_ratio"][0] == 1.0
    assert m["overlap_mass_student"][0] == pytest.approx(0.8)
    assert m["overlap_mass_teacher"][0] == pytest.approx(0.8)
    assert m["topk_coverage_student"][0] == pytest.approx(0.8)
    assert m["topk_coverage_teacher"][0] == pytest.approx(0.8)
    assert m["topk_reverse_kl"][0] == pytest.approx(0.0, abs=1e-12)
    assert m["sampled_reverse_kl"][0] == pytest.approx(0.0, abs=1e-12)
    assert m["entropy_gap"][0] == pytest.approx(0.0, abs=1e-12)
    assert m["overlap_token_advantage"][0] == pytest.approx(0.0, abs=1e-12)
    assert m["top1_agreement"][0] == 1.0


def test_disjoint_topk():
    # S = {0, 1}, T = {2, 3}: nothing shared. KL on the student top-2 = Σ 0.5 (ln .4 - ln .1) = ln 4.
    m = states_from_full([[0.4, 0.4, 0.1, 0.1]], [[0.1, 0.1, 0.4, 0.4]], k=2)
    assert m["overlap_ratio"][0] == 0.0
    assert m["overlap_mass_student"][0] == 0.0
    assert m["overlap_mass_teacher"][0] == 0.0
    assert np.isnan(m["overlap_token_advantage"][0])  # undefined on an empty intersection
    assert m["topk_reverse_kl"][0] == pytest.approx(math.log(4))
    assert m["entropy_gap"][0] == pytest.approx(0.0, abs=1e-12)
    assert m["top1_agreement"][0] == 0.0


def test_partial_overlap_top2():
    # house-style example: top-2 {0,1} vs {1,2} -> 0.5
    p = [[0.6, 0.3, 0.05, 0.05]]
    q = [[0.05, 0.5, 0.4, 0.05]]
    m = states_from_full(p, q, k=2)
    assert m["overlap_ratio"][0] == 0.5
    assert m["overlap_mass_student"][0] == pytest.approx(0.3)
    assert m["overlap_mass_teacher"][0] == pytest.approx(0.5)
    # a single shared token: p̄ = q̄ = 1 -> advantage 0
    assert m["overlap_token_advantage"][0] == pytest.approx(0.0, abs=1e-12)
    # (2/3) ln(.6/.05) + (1/3) ln(.3/.5) = 1.486329
    assert m["topk_reverse_kl"][0] == pytest.approx(2 / 3 * math.log(12) + 1 / 3 * math.log(0.6), abs=1e-9)
    assert m["topk_reverse_kl"][0] == pytest.approx(1.486329, abs=1e-6)
    assert m["topk_coverage_student"][0] == pytest.approx(0.9)
    assert m["topk_coverage_teacher"][0] == pytest.approx(0.9)
    assert m["top1_agreement"][0] == 0.0


def test_uniform_vs_peaked_entropy_gap():
    u = [[0.25] * 4]
    q = [[0.97, 0.01, 0.01, 0.01]]
    m = states_from_full(u, q, k=4)
    h_q = -(0.97 * math.log(0.97) + 3 * 0.01 * math.log(0.01))
    assert m["student_entropy"][0] == pytest.approx(1.386294, abs=1e-6)
    assert m["entropy_gap"][0] == pytest.approx(math.log(4) - h_q)
    assert m["entropy_gap_signed"][0] == pytest.approx(h_q - math.log(4))
    # k = V: everything overlaps and the top-k KL is the full KL(p||q)
    assert m["overlap_ratio"][0] == 1.0
    full_kl = sum(0.25 * (math.log(0.25) - math.log(x)) for x in q[0])
    assert m["topk_reverse_kl"][0] == pytest.approx(full_kl)


def test_two_token_kl_golden():
    # KL([.1,.9] || [.9,.1]) = 0.8 ln 9 = 1.757780; sampled token 1: ln .9 - ln .1 = ln 9
    m = states_from_full([[0.1, 0.9]], [[0.9, 0.1]], k=2, sampled_N=[1])
    assert m["topk_reverse_kl"][0] == pytest.approx(1.757780, abs=1e-6)
    assert m["sampled_reverse_kl"][0] == pytest.approx(math.log(9))


def test_overlap_token_advantage_two_shared():
    # S = {0,1}, T = {1,0}; p̄ = (5/8, 3/8), q̄ = (1/3, 2/3)
    m = states_from_full([[0.5, 0.3, 0.2]], [[0.3, 0.6, 0.1]], k=2)
    want = 0.5 * (5 / 8 * math.log((1 / 3) / (5 / 8)) + 3 / 8 * math.log((2 / 3) / (3 / 8)))
    assert m["overlap_token_advantage"][0] == pytest.approx(want)
    assert m["overlap_token_advantage"][0] == pytest.approx(-0.088559, abs=1e-6)
    assert m["overlap_token_advantage"][0] <= 0


def test_advantage_nan_positions_do_not_move_pooled_mean():
    p = [[0.4, 0.4, 0.1, 0.1], [0.5, 0.3, 0.2, 1e-9]]
    q = [[0.1, 0.1, 0.4, 0.4], [0.3, 0.6, 0.1, 1e-9]]
    m = states_from_full(p, q, k=2)
    agg = metrics.aggregate(m, prompt_N=np.array([0, 0]), depth_N=np.array([0, 1]), n_prompts=1, depth_edges=[0])
    assert agg["pooled"]["overlap_token_advantage"].mean == pytest.approx(m["overlap_token_advantage"][1])
    assert agg["pooled"]["overlap_token_advantage"].n == 1
    assert agg["pooled"]["overlap_ratio"].n == 2
    assert agg["pooled"]["overlap_ratio"].mean == pytest.approx(0.5)


def test_pooled_is_token_weighted_and_per_prompt_is_per_prompt():
    vals = {"x": np.array([1.0, 0.0, 0.0, 0.0])}
    agg = metrics.aggregate(vals, np.array([0, 1, 1, 1]), np.array([0, 0, 1, 2]), 2, [0])
    assert agg["pooled"]["x"].mean == pytest.approx(0.25)
    assert list(agg["per_prompt"]["x"]) == [1.0, 0.0]
    assert list(agg["per_prompt_states"]) == [1, 3]


def test_bootstrap_ci_degenerate_when_prompts_agree_and_brackets_mean_otherwise():
    same = {"x": np.full(6, 0.7)}
    prompts = np.array([0, 0, 1, 1, 2, 2])
    e = metrics.aggregate(same, prompts, np.zeros(6, int), 3, [0])["pooled"]["x"]
    assert e.ci_low == pytest.approx(0.7) and e.ci_high == pytest.approx(0.7)
    rng = np.random.default_rng(0)
    vals = {"x": rng.normal(size=200)}
    pr = np.repeat(np.arange(20), 10)
    a = metrics.aggregate(vals, pr, np.zeros(200, int), 20, [0], seed=3)["pooled"]["x"]
    b = metrics.aggregate(vals, pr, np.zeros(200, int), 20, [0], seed=3)["pooled"]["x"]
    assert a == b  # same seed, same numbers
    assert a.ci_low < a.mean < a.ci_high
    # resampling prompts with 10 states each: the CI is about 2 * 1.96 / sqrt(200) wide, not much narrower
    assert 0.15 < a.ci_high - a.ci_low < 0.9


def test_depth_buckets():
    vals = {"x": np.array([1.0, 1.0, 0.0, 0.0, 0.0])}
    depth = np.array([0, 1, 2, 3, 10])
    agg = metrics.aggregate(vals, np.zeros(5, int), depth, 1, [0, 2, 4])
    buckets = {(b["start"], b["end"]): b for b in agg["depth"]}
    assert buckets[(0, 2)]["metrics"]["x"].mean == 1.0
    assert buckets[(2, 4)]["metrics"]["x"].mean == 0.0
    assert buckets[(4, None)]["n_states"] == 1
    assert metrics.depth_edges_for(256, 600) == [0, 256, 512]


def test_estimate_round_trip():
    e = metrics.Estimate(0.5, 0.4, 0.6, 10)
    assert metrics.Estimate.from_dict(e.to_dict()) == e


def test_shape_mismatch_is_an_error():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError):
        metrics.per_state_metrics(z, z, z[:, 0], z[:, 0], np.zeros((2, 2)), z, z[:, 0], z, z[:, 0])


def test_support_mass_ignores_which_of_tied_tokens_made_the_top_k():
    # Student and teacher uniform over the same 4 tokens, k = 2, ties broken differently (the teacher's top-2 is the
    # student's other two): overlap ratio and masses read 0, support mass reads 1 (Q(S) = P(S) = 0.5).
    p = [[0.25, 0.25, 0.25, 0.25]]
    q = [[0.25 - 1e-9, 0.25 - 1e-9, 0.25 + 1e-9, 0.25 + 1e-9]]
    m = states_from_full(p, q, k=2)
    assert m["overlap_ratio"][0] == 0.0 and m["overlap_mass_student"][0] == 0.0
    assert m["support_mass"][0] == pytest.approx(1.0)
    # A teacher that puts 0.3 of its mass on the student's 4 tokens (and 0.7 on 4 others): Q(S)/P(S) = 0.15/0.5.
    p8 = [[0.25] * 4 + [1e-12] * 4]
    q8 = [[0.075] * 4 + [0.175] * 4]
    assert states_from_full(p8, q8, k=2)["support_mass"][0] == pytest.approx(0.3)
    # A teacher more peaked on the student's top-k than the student: capped at 1 (it supports every action).
    assert states_from_full([[0.5, 0.3, 0.2]], [[0.9, 0.09, 0.01]], k=2)["support_mass"][0] == 1.0
