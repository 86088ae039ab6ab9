"""Knowledge-novelty estimates: teacher distinguishability (pure, hand-made arrays) and, on tiny random models
through ``run_probe``, the distinguishability matrix, the step-0 gradient norm and the continuation gain."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from opd_probe.errors import InputError
from opd_probe.novelty import distinguishability, indistinguishable_pairs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
TINY_PROMPTS = REPO / "sample_prompts" / "tiny.jsonl"
NO_ANSWERS = REPO / "sample_prompts" / "instruct.jsonl"
SMALL = dict(limit=3, samples=2, max_new_tokens=6)


# ------------------------------------------------------------------------------------------------ pure
def _teacher(ids, probs):
    return np.asarray(ids, dtype=np.int64), np.log(np.asarray(probs, dtype=np.float64))


def test_identical_teachers_are_indistinguishable():
    rng = np.random.default_rng(0)
    student = rng.integers(0, 50, size=(20, 4))
    ids = rng.integers(0, 50, size=(20, 4))
    q = rng.dirichlet(np.ones(4), size=20)
    d = distinguishability(student, {"a": _teacher(ids, q), "b": _teacher(ids.copy(), q.copy())})
    assert d["teachers"] == ["a", "b"]
    assert d["overlap"][0][1] == pytest.approx(1.0)
    assert d["kl"][0][1] == pytest.approx(0.0, abs=1e-12)
    assert indistinguishable_pairs(d, 0.9, 0.05) == {"a": ["b"], "b": ["a"]}


def test_different_teachers_are_told_apart_and_matrices_are_symmetric():
    rng = np.random.default_rng(1)
    n, k = 30, 4
    student = rng.integers(0, 100, size=(n, k))
    teachers = {name: _teacher(rng.integers(0, 100, size=(n, k)), rng.dirichlet(np.ones(k), size=n))
                for name in ("a", "b", "c")}
    d = distinguishability(student, teachers)
    ov, kl = np.array(d["overlap"]), np.array(d["kl"])
    assert ov.shape == kl.shape == (3, 3)
    np.testing.assert_allclose(ov, ov.T)
    np.testing.assert_allclose(kl, kl.T)
    np.testing.assert_allclose(np.diag(ov), 1.0)
    np.testing.assert_allclose(np.diag(kl), 0.0)
    off = ~np.eye(3, dtype=bool)
    assert (ov[off] < 1).all() and (ov[off] >= 0).all()
    assert (kl[off] > 0).all()
    assert indistinguishable_pairs(d, 0.9, 0.05) == {"a": [], "b": [], "c": []}


def test_overlap_counts_shared_ids_per_state():
    student = np.zeros((2, 2), dtype=np.int64)
    a = _teacher([[1, 2], [5, 6]], [[0.5, 0.5], [0.5, 0.5]])
    b = _teacher([[2, 3], [6, 5]], [[0.5, 0.5], [0.5, 0.5]])
    d = distinguishability(student, {"a": a, "b": b})
    assert d["overlap"][0][1] == pytest.approx((0.5 + 1.0) / 2)
    assert d["kl"][0][1] == pytest.approx(0.0, abs=1e-12)  # same log-probs on the student's top-k
    # overlap alone is not enough to be indistinguishable: both conditions are needed
    assert indistinguishable_pairs(d, 0.9, 0.05) == {"a": [], "b": []}
    assert indistinguishable_pairs(d, 0.7, 0.05) == {"a": ["b"], "b": ["a"]}


def test_kl_by_hand_two_tokens():
    """p = (1/2, 1/2), q = (3/4, 1/4) on the student's 2 top-k tokens:
    KL(p||q) = ½ ln(2/3) + ½ ln 2 = ½ ln(4/3); KL(q||p) = ¾ ln(3/2) + ¼ ln(1/2); the matrix holds their mean.
    p is passed unnormalised (0.2, 0.2): the teachers are renormalised on the student's top-k first."""
    student = np.array([[3, 4]])
    a = (np.array([[3, 4]]), np.log(np.array([[0.2, 0.2]])))
    b = (np.array([[3, 9]]), np.log(np.array([[0.75, 0.25]])))
    d = distinguishability(student, {"a": a, "b": b})
    kl_pq = 0.5 * math.log(4 / 3)
    kl_qp = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert d["kl"][0][1] == pytest.approx((kl_pq + kl_qp) / 2, rel=1e-12)
    assert d["kl"][1][0] == d["kl"][0][1]
    assert d["overlap"][0][1] == pytest.approx(0.5)
    # KL well above the default 0.05 line: not indistinguishable
    assert (kl_pq + kl_qp) / 2 > 0.05
    assert indistinguishable_pairs(d, 0.0, 0.05) == {"a": [], "b": []}


# ------------------------------------------------------------------------------------------------ tiny models


@pytest.fixture(scope="module")
def models(tiny_model):
    student = tiny_model(seed=0)
    twin = tiny_model(seed=0, init_from=student, perturb=0.0)  # a second folder with bit-identical weights
    other = tiny_model(seed=1)
    assert twin != student
    return student, twin, other


@pytest.fixture(scope="module")
def probe(models, tmp_path_factory):
    from opd_probe.config import ProbeConfig
    from opd_probe.run.probe import run_probe

    student, twin, other = models
    cfg = ProbeConfig(student=str(student), teachers=(str(student), str(twin), str(other)),
                      out=str(tmp_path_factory.mktemp("novelty") / "run"), prompts=str(TINY_PROMPTS),
                      grad_norm=True, continuation_depths=(0, 2), **SMALL)
    return run_probe(cfg)


def test_twin_teachers_are_indistinguishable_and_the_other_is_not(probe, models):
    student, twin, other = (str(m) for m in models)
    d = probe.distinguishability
    assert d["teachers"] == [student, twin, other]
    ov, kl = np.array(d["overlap"]), np.array(d["kl"])
    np.testing.assert_allclose(ov, ov.T)
    np.testing.assert_allclose(kl, kl.T)
    assert ov[0, 1] == pytest.approx(1.0) and kl[0, 1] == pytest.approx(0.0, abs=1e-6)
    assert ov[0, 2] < 1 and kl[0, 2] > 0.05
    same = indistinguishable_pairs(d, probe.thresholds["indistinguishable_overlap"],
                                   probe.thresholds["indistinguishable_kl"])
    assert same == {student: [twin], twin: [student], other: []}
    # and the verdicts say so
    for name, peer in ((student, twin), (twin, student)):
        v = probe.pair(name).verdict
        assert any(peer in r for r in v.recommendations)
        assert any(peer in r.message for r in v.reasons if r.code == "weak-signal")
    assert not any("teaches the same" in r for r in probe.pair(other).verdict.recommendations)


def test_grad_norm(probe, models):
    student, twin, other = (str(m) for m in models)
    g_self = probe.pair(student).novelty.grad_norm
    g_twin = probe.pair(twin).novelty.grad_norm
    g_other = probe.pair(other).novelty.grad_norm
    assert math.isfinite(g_other) and g_other > 0
    assert 0 <= g_self < 1e-5 and 0 <= g_twin < 1e-5
    assert g_other > 1e3 * max(g_self, g_twin, 1e-12)
    assert all("grad_norm_seconds" in p.timings for p in probe.pairs)


def test_continuation_gain_entries(probe):
    for p in probe.pairs:
        entries = p.novelty.continuation
        assert [c.depth for c in entries] == [0, 2]
        for c in entries:
            assert 1 <= c.n <= 3 * 2
            assert 0 <= c.teacher_accuracy <= 1 and 0 <= c.student_accuracy <= 1
            assert -1 <= c.gain <= 1
            assert c.gain == pytest.approx(c.teacher_accuracy - c.student_accuracy)
            assert c.se >= 0
        assert "continuation_seconds" in p.timings
    assert probe.rollouts["with_answers"] == 3 * 2


def test_continuation_depths_need_answers(models, tmp_path):
    from opd_probe.config import ProbeConfig
    from opd_probe.run.probe import run_probe

    student = str(models[0])
    cfg = ProbeConfig(student=student, teachers=(student,), out=str(tmp_path / "run"), prompts=str(NO_ANSWERS),
                      continuation_depths=(0, 2), limit=1, samples=1, max_new_tokens=2)
    with pytest.raises(InputError, match="answer"):
        run_probe(cfg)


def test_a_teachers_verdict_does_not_depend_on_the_other_candidates(probe, models, tmp_path):
    """Probed alone (on the same student states, --reuse) each teacher gets the status and reasons it got in the
    set: no rule reads the other teachers (issue 14)."""
    from opd_probe.config import ProbeConfig
    from opd_probe.run.probe import run_probe

    student = str(models[0])
    for i, name in enumerate(str(m) for m in models):
        alone = run_probe(ProbeConfig(student=student, teachers=(name,), out=str(tmp_path / f"alone-{i}"),
                                      reuse=probe.config["out"], grad_norm=False, continuation_depths=(0, 2),
                                      **SMALL))
        v_set, v_alone = probe.pair(name).verdict, alone.pair(name).verdict
        assert v_alone.status == v_set.status
        assert [(r.code, r.severity, r.metric) for r in v_alone.reasons] == \
            [(r.code, r.severity, r.metric) for r in v_set.reasons]
