"""The validation benchmark's statistics (opd_probe.lab.validation) on hand-derived cases, and the
pre-registration guard."""

from __future__ import annotations

import math

import numpy as np
import pytest

from opd_probe.errors import InputError
from opd_probe.lab import validation as v


def test_balanced_accuracy_by_hand():
    # TPR 1/2 (one of the two working pairs got GO), TNR 1/2 (one of two failing pairs warned)
    assert v.balanced_accuracy([True, False, True, False], [True, True, False, False]) == 0.5
    # always-go and always-warn score 0.5 whatever the base rate; a perfect predictor scores 1
    works = [True, False, False, False, False]
    assert v.balanced_accuracy([True] * 5, works) == 0.5
    assert v.balanced_accuracy([False] * 5, works) == 0.5
    assert v.balanced_accuracy(works, works) == 1.0
    # TPR 1, TNR 3/4 -> 0.875
    assert v.balanced_accuracy([True, True, False, False, False], works) == pytest.approx(0.875)
    assert math.isnan(v.balanced_accuracy([True, False], [True, True]))  # undefined with one class


def test_auroc_by_hand_with_ties():
    # pairs (works, fails): (0.35 vs 0.1) win, (0.35 vs 0.4) loss, (0.8 vs both) win -> 3/4
    assert v.auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert v.auroc([1.0, 1.0], [True, False]) == 0.5  # a tie counts one half
    assert v.auroc([0.0, 1.0], [True, False]) == 0.0
    assert math.isnan(v.auroc([0.2, 0.3], [False, False]))


def test_rankdata_and_spearman_with_ties():
    assert v.rankdata([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    # ranks x = 1, 2.5, 2.5, 4; y = 1, 2, 3, 4: cov 4.5, var_x 4.5, var_y 5 -> 4.5 / sqrt(22.5)
    assert v.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert v.spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    assert math.isnan(v.spearman([1, 1, 1], [1, 2, 3]))


def test_top1_regret():
    gains = {"a": 0.3, "b": 0.1, "c": 0.2}
    assert v.top1_regret(gains, ["b", "a", "c"]) == pytest.approx(0.2)
    assert v.top1_regret(gains, ["a", "c", "b"]) == 0.0


def test_bootstrap_ci_is_deterministic_and_covers_the_estimate():
    works = np.array([True, False] * 10)
    score = np.where(works, 0.7, 0.3) + np.linspace(-0.25, 0.25, 20)
    stat = lambda idx: v.auroc(score[idx], works[idx])  # noqa: E731
    lo, hi = v.bootstrap_ci(stat, 20, n_boot=300, seed=1)
    assert (lo, hi) == v.bootstrap_ci(stat, 20, n_boot=300, seed=1)
    assert lo <= v.auroc(score, works) <= hi <= 1.0
    # a constant statistic has a zero-width interval; clustering draws whole groups
    assert v.bootstrap_ci(lambda idx: 0.5, 6, n_boot=50, clusters=list("aabbcc")) == (0.5, 0.5)
    sizes = []
    v.bootstrap_ci(lambda idx: sizes.append(len(idx)) or 0.0, 6, n_boot=50, clusters=list("aaabcc"))
    assert set(sizes) > {6} and all(s in range(3, 10) for s in sizes)  # 3 clusters of sizes 3, 1, 2


def test_fit_threshold_picks_the_rule_with_the_best_balanced_accuracy():
    assert v.fit_threshold([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == (0.8, True)
    assert v.fit_threshold([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == (0.2, False)


def test_rules_hash_changes_with_a_threshold_or_a_rule_source(tmp_path):
    src = tmp_path / "verdict.py"
    src.write_text("rule = 1\n")
    h = v.rules_hash({"mass_nogo": 0.8}, [src])
    assert h == v.rules_hash({"mass_nogo": 0.8}, [src])
    assert h != v.rules_hash({"mass_nogo": 0.81}, [src])
    src.write_text("rule = 2\n")
    assert h != v.rules_hash({"mass_nogo": 0.8}, [src])
    assert len(v.rules_hash({})) == 16  # the package's own rules


def test_held_out_outcomes_are_refused_against_predictions_from_other_rules():
    v.check_rules_hash({"rules_hash": "abc"}, "abc")
    with pytest.raises(InputError) as e:
        v.check_rules_hash({"rules_hash": "abc"}, "def")
    assert "'abc'" in e.value.message and "new held-out set" in e.value.fix
    with pytest.raises(InputError):
        v.check_rules_hash({}, "def")
