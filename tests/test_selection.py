"""opd_probe.selection (pure): exact OOD split counts, per-prompt means, deterministic selection. Hand-derived answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from opd_probe import selection


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
