"""Cross-tokenizer alignment and its metrics (align.py, crossmetrics.py): hand-derived cases."""

import numpy as np
import pytest

from opd_probe import metrics
from opd_probe.align import align, length_summary, token_starts
from opd_probe.crossmetrics import HOW, cross_state_metrics, string_maps


def test_common_boundaries_of_two_tokenizations_of_one_text():
    # "ab cd": student a|b| |c|d, teacher ab| cd -> common boundaries 0 and 2; chunks "ab", " cd"
    a = align([0, 1, 2, 3, 4], [0, 2])
    assert a.common_C.tolist() == [0, 2]
    assert a.student_chunk_S.tolist() == [0, 0, 1, 1, 1]
    assert a.teacher_chunk_T.tolist() == [0, 1]
    assert a.teacher_at_S.tolist() == [0, -1, 1, -1, -1]
    s, t = a.tokens_per_chunk()
    assert s.tolist() == [2, 3] and t.tolist() == [1, 1]


def test_an_end_of_sequence_token_is_its_own_chunk_at_the_text_end():
    a = align([0, 1, 2, 3, 4, 5], [0, 2, 5])
    assert a.common_C.tolist() == [0, 2, 5]
    assert a.teacher_at_S.tolist() == [0, -1, 1, -1, -1, 2]
    assert a.student_chunk_S.tolist() == [0, 0, 1, 1, 1, 2]


def test_a_token_without_text_joins_its_chunk_and_is_not_aligned():
    # student: a zero-width token at 0, then "ab"; teacher: a|b -> common 0 and 2, only the first student token at 0
    # is aligned; the teacher's "b" (start 1) belongs to chunk 0
    a = align([0, 0, 2], [0, 1, 2])
    assert a.common_C.tolist() == [0, 2]
    assert a.teacher_at_S.tolist() == [0, -1, 2]
    assert a.teacher_chunk_T.tolist() == [0, 0, 1]


def test_boundaries_only_one_side_has_are_not_common():
    # "abcd": student ab|cd, teacher a|bc|d: only 0 is common, everything is one chunk
    a = align([0, 2], [0, 1, 3])
    assert a.common_C.tolist() == [0]
    assert a.teacher_at_S.tolist() == [0, -1]
    assert a.n_chunks == 1


def test_token_starts_from_prefix_decodes():
    # token 2's prefix ends inside a multi-byte character (not a clean prefix): it gets token 1's start
    assert token_starts([0, 2, 3, 5], [True, True, False, True]).tolist() == [0, 2, 2, 5]
    assert token_starts([0, 1, 2], [False, True, True]).tolist() == [0, 1, 2]  # the empty prefix is always clean


@pytest.mark.parametrize("s,t", [([1, 2], [0]), ([0, 2, 1], [0, 1]), ([], [0])])
def test_malformed_starts_are_refused(s, t):
    with pytest.raises(ValueError):
        align(s, t)


def test_length_summary():
    assert length_summary(np.array([1, 1, 2, 4])) == {"mean": 2.0, "p50": 1.5, "p90": 3.4000000000000004, "max": 4}
    assert length_summary(np.array([]))["mean"] is None


def test_string_maps():
    t2s, shared = string_maps(["a", "b", "ab", None, "a"], ["ab", "c", "a", None])
    assert t2s.tolist() == [2, -1, 0, -1]
    assert shared.tolist() == [True, False, True, False, True]


def _random_dists(rng, n, v):
    logits = rng.normal(size=(n, v)) * 2
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def _topk(lp, k):
    ids = np.argsort(-lp, axis=1)[:, :k]
    return ids, np.take_along_axis(lp, ids, axis=1)


def test_identical_tokenizations_give_the_same_tokenizer_metrics():
    """Every chunk is one token, every position aligned, every string shared: the cross-tokenizer metrics must be
    the same-tokenizer ones (and the sampled reverse KL per token)."""
    rng = np.random.default_rng(0)
    n, v, k = 40, 12, 4
    lp_s, lp_t = _random_dists(rng, n, v), _random_dists(rng, n, v)
    sampled = rng.integers(0, v, size=n)
    s_ids, s_lp = _topk(lp_s, k)
    t_ids, t_lp = _topk(lp_t, k)
    ent = lambda lp: -(np.exp(lp) * lp).sum(axis=1)  # noqa: E731
    s_x, t_x = lp_s[np.arange(n), sampled], lp_t[np.arange(n), sampled]
    same = metrics.per_state_metrics(s_ids, s_lp, ent(lp_s), s_x, t_ids, t_lp, ent(lp_t),
                                     np.take_along_axis(lp_t, s_ids, axis=1), t_x)
    cross = cross_state_metrics(s_ids, s_lp, ent(lp_s), s_x, t_ids, t_lp, ent(lp_t), t_x,
                                teacher_to_student_V=np.arange(v), student_shared_V=np.ones(v, bool),
                                teacher_at_N=np.arange(n), student_chunk_N=np.arange(n), teacher_chunk_M=np.arange(n),
                                n_chunks=n)
    for m in ("overlap_ratio", "overlap_mass_student", "overlap_mass_teacher", "top1_agreement", "entropy_gap",
              "entropy_gap_signed", "sampled_reverse_kl", "student_entropy", "teacher_entropy",
              "topk_coverage_student", "topk_coverage_teacher"):
        np.testing.assert_allclose(cross[m], same[m], rtol=1e-12, err_msg=m)
    assert (cross["aligned"] == 1).all()
    np.testing.assert_allclose(cross["shared_mass_student"], 1.0)
    np.testing.assert_allclose(cross["shared_mass_teacher"], 1.0)
    assert np.isnan(cross["topk_reverse_kl"]).all() and np.isnan(cross["support_mass"]).all()
    assert set(cross) == set(metrics.METRICS) | {"aligned", "chunk_unsupported", "shared_mass_student",
                                                 "shared_mass_teacher"}
    assert set(HOW) == set(cross)


def test_chunk_level_reverse_kl_and_unsupported_by_hand():
    """Student "a","b" (log p -1, -1) is teacher "ab" (log q -3): chunk log-ratio -2 - (-3) = 1 nat, 0.5 per
    student token. Chunk 1: student "c" (log p -0.5), teacher "c" at -0.5 - ln 20 - 0.01 -> unsupported."""
    n_lp = np.log([[0.6, 0.3], [0.5, 0.5], [0.7, 0.2]])
    s_ids = np.array([[0, 1], [1, 0], [2, 0]])
    t_ids = np.array([[3, 0], [2, 1]])  # teacher ids: 3 = "ab" (no student token), 0 = "a", 2 = "c", 1 = "b"
    t_lp = np.log([[0.8, 0.1], [0.4, 0.3]])
    t2s = np.array([0, 1, 2, -1])  # teacher id -> student id; teacher "ab" has no student token
    out = cross_state_metrics(
        s_ids, n_lp, np.array([1.0, 0.7, 0.8]), np.array([-1.0, -1.0, -0.5]),
        t_ids, t_lp, np.array([0.9, 1.2]), np.array([-3.0, -0.5 - np.log(20) - 0.01]),
        teacher_to_student_V=t2s, student_shared_V=np.array([True, True, True]),
        teacher_at_N=np.array([0, -1, 1]), student_chunk_N=np.array([0, 0, 1]), teacher_chunk_M=np.array([0, 1]),
        n_chunks=2)
    np.testing.assert_allclose(out["sampled_reverse_kl"], [0.5, 0.5, np.log(20) + 0.01])
    assert out["chunk_unsupported"].tolist() == [0.0, 0.0, 1.0]
    assert out["aligned"].tolist() == [1.0, 0.0, 1.0]
    # state 0: student top-2 {a, b}, teacher top-2 {"ab" (unshared), a} -> overlap {a}: ratio 1/2, student mass
    # 0.6, teacher mass 0.1; the teacher's shared mass 0.1 / 0.9; top-1 "a" vs "ab": no
    assert out["overlap_ratio"][0] == 0.5
    np.testing.assert_allclose([out["overlap_mass_student"][0], out["overlap_mass_teacher"][0]], [0.6, 0.1])
    np.testing.assert_allclose(out["shared_mass_teacher"][0], 0.1 / 0.9)
    np.testing.assert_allclose(out["shared_mass_student"][0], 1.0)
    assert out["top1_agreement"][0] == 0.0
    # state 2: student {c, a}, teacher {c, b} -> overlap {c}; top-1 agrees; entropy gap |1.2 - 0.8|
    assert out["overlap_ratio"][2] == 0.5 and out["top1_agreement"][2] == 1.0
    np.testing.assert_allclose(out["entropy_gap"][2], 0.4)
    assert np.isnan(out["overlap_ratio"][1]) and np.isnan(out["teacher_entropy"][1])
