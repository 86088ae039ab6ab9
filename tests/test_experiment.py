"""opd_probe.experiment: paired intervals with seed variance, the decision rule and the power estimate, on cases
derived by hand (the arithmetic is in the comments)."""

import math

import pytest

from opd_probe import experiment as ex
from opd_probe.experiment import Evidence, Interval, decide, paired_seed_interval, power_estimate


@pytest.mark.parametrize("df, table", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (5, 2.5706),
                                       (7, 2.3646), (10, 2.2281), (30, 2.0423), (100, 1.9840)])
def test_t_quantile_matches_the_table(df, table):
    assert ex.t_quantile_975(df) == pytest.approx(table, abs=3e-4)


def test_t_quantile_rounds_small_fractional_df_down_and_tends_to_the_normal():
    assert ex.t_quantile_975(2.9) == ex.t_quantile_975(2)  # conservative: fewer df, wider interval
    assert ex.t_quantile_975(math.inf) == ex.Z975
    with pytest.raises(ValueError):
        ex.t_quantile_975(0.5)


def test_one_seed_is_the_paired_t_interval_over_problems():
    # D = a − b = [1, 0, 0, 1]: mean 0.5, sample variance 4·0.25/3 = 1/3, SE² = (1/3)/4 = 1/12, df = 3
    iv = paired_seed_interval([[1, 1, 0, 1]], [0, 1, 0, 0])
    se = math.sqrt(1 / 12)
    assert iv.mean == 0.5 and iv.se == pytest.approx(se) and iv.df == pytest.approx(3)
    assert iv.se_seed is None and "seed variance not measured" in iv.method
    assert (iv.low, iv.high) == pytest.approx((0.5 - 3.182446 * se, 0.5 + 3.182446 * se), abs=1e-5)


def test_pairing_removes_problem_difficulty():
    # the same +1 on 2 of 4 problems, but the problems differ wildly in difficulty: pairing sees only D
    easy_hard_a, easy_hard_b = [1, 1, 1, 0, 1, 0], [1, 0, 1, 0, 0, 0]
    iv = paired_seed_interval([easy_hard_a], easy_hard_b)
    # D = [0, 1, 0, 0, 1, 0]: mean 1/3; independent proportions (4/6 vs 2/6) would give SE ≈ 0.27
    assert iv.mean == pytest.approx(1 / 3)
    assert iv.se == pytest.approx(math.sqrt((4 * (1 / 9) + 2 * (4 / 9)) / 5 / 6))


def test_two_seeds_add_the_seed_variance():
    # a (2 seeds × 3 problems) = [[1,1,0],[1,0,0]] against a baseline of zeros: D = a
    # d_s = [2/3, 1/3] → var 1/18, SE_seed² = 1/36; d_p = [1, 0.5, 0] → var 1/4, SE_problem² = 1/12
    # SE² = 1/36 + 3/36 = 1/9; df = (1/9)² / ((1/36)²/1 + (1/12)²/2) = 16/5.5 = 2.909 → t(df 2) = 4.3027
    iv = paired_seed_interval([[1, 1, 0], [1, 0, 0]], [0, 0, 0])
    assert iv.mean == pytest.approx(0.5) and iv.se == pytest.approx(1 / 3)
    assert iv.se_seed == pytest.approx(1 / 6) and iv.se_problem == pytest.approx(math.sqrt(1 / 12))
    assert iv.df == pytest.approx(16 / 5.5) and iv.per_seed == pytest.approx((2 / 3, 1 / 3))
    assert iv.low == pytest.approx(0.5 - 4.302653 / 3, abs=1e-6)


def test_seeds_that_disagree_widen_the_interval():
    # the zoo's working pair: two seeds gained +0.285 and +0.115 on the same problems
    a = [[1] * 6 + [0] * 14, [1] * 3 + [0] * 17]
    one = paired_seed_interval(a[:1], [0] * 20)
    both = paired_seed_interval(a, [0] * 20)
    assert both.se_seed > 0 and both.high - both.low > (one.high - one.low) * 0.9


def test_arm_against_arm_is_paired_seed_by_seed():
    teacher, control = [[1, 1, 0, 1], [1, 0, 1, 1]], [[1, 0, 0, 1], [0, 0, 1, 1]]
    iv = paired_seed_interval(teacher, control)
    assert iv.per_seed == pytest.approx((0.25, 0.25)) and iv.se_seed == 0.0  # both seeds +1 problem
    with pytest.raises(ValueError):
        paired_seed_interval(teacher, [[1, 0, 0]])
    with pytest.raises(ValueError):
        paired_seed_interval([[1]], [0])


def test_identical_arms_give_a_degenerate_interval_at_zero():
    iv = paired_seed_interval([[1, 0, 1], [1, 0, 1]], [[1, 0, 1], [1, 0, 1]])
    assert (iv.mean, iv.low, iv.high, iv.df) == (0.0, 0.0, 0.0, None)


def test_interval_round_trips():
    iv = paired_seed_interval([[1, 1, 0], [1, 0, 0]], [0, 0, 0])
    assert Interval.from_dict(iv.to_dict()) == iv


def test_power_estimate_one_seed():
    # mean 0.5, SE_problem² = 1/12 with P = 4. h = 0.5 / (1.95996 + 0.84162) = 0.178470, h² = 0.031852
    # P' = 4 · (1/12) / 0.031852 = 10.47 → 11; seeds cannot be projected from one seed
    pw = power_estimate(paired_seed_interval([[1, 1, 0, 1]], [0, 1, 0, 0]))
    assert pw.target_se == pytest.approx(0.5 / 2.801585, rel=1e-6)
    assert pw.problems_needed == 11 and pw.seeds_needed is None and "--seeds 2" in pw.note


def test_power_estimate_two_seeds_and_a_bar():
    # the two-seed case above against bar 0.1: margin 0.4, h = 0.4/2.801585 = 0.142776, h² = 0.020385
    # P' = 3 · (1/12) / (0.020385 − 1/36) → negative denominator: problems alone cannot decide
    # S' = 2 · (1/36) / (0.020385 − 1/12) → negative too
    pw = power_estimate(paired_seed_interval([[1, 1, 0], [1, 0, 0]], [0, 0, 0]), bar=0.1)
    assert pw.problems_needed is None and pw.seeds_needed is None and "cannot decide" in pw.note
    # a smaller spread: D = [[1,0,1,0,1,0,1,0],[1,0,1,0,1,0,0,0]] — d_s = [0.5, 0.375], SE_seed² = 0.0078125/2
    # = 0.00390625; d_p = [1,0,1,0,1,0,.5,0], mean 0.4375: Σ(d_p − mean)² = 3·0.5625² + 4·0.4375² + 0.0625²
    # = 1.71875, var = 1.71875/7, SE_problem² = 1.71875/56 = 0.0306920
    iv = paired_seed_interval([[1, 0, 1, 0, 1, 0, 1, 0], [1, 0, 1, 0, 1, 0, 0, 0]], [0] * 8)
    assert iv.se_seed ** 2 == pytest.approx(0.00390625) and iv.se_problem ** 2 == pytest.approx(1.71875 / 56)
    pw = power_estimate(iv)
    # h² = (0.4375/2.801585)² = 0.0243865; P' = 8 · 0.030692 / (0.0243865 − 0.0039063) = 11.99 → 12
    assert pw.problems_needed == 12
    assert pw.seeds_needed is None  # SE_problem² > h²: more seeds on 8 problems cannot decide


def test_power_estimate_of_a_zero_margin():
    pw = power_estimate(paired_seed_interval([[1, 0, 1]], [1, 0, 1]))
    assert pw.target_se is None and pw.problems_needed is None


def iv(mean, low, high, seeds=3, problems=100):
    return Interval(mean, low, high, (high - low) / 4, 0.01, 0.02, 10.0, seeds, problems, (mean,) * seeds, "test")


ENOUGH = Evidence(steps=100, problems=100, seeds=3)


def test_decide_the_teacher_adds_signal():
    d = decide(iv(0.15, 0.05, 0.25), iv(0.3, 0.2, 0.4), iv(-0.01, -0.03, 0.01), ENOUGH)
    assert d.verdict == ex.ADDS_SIGNAL and d.passed and "retention" in d.reasons[0]
    # a stated bar the lower bound does not clear: inconclusive, with the power estimate
    d = decide(iv(0.15, 0.05, 0.25), iv(0.3, 0.2, 0.4), None, ENOUGH, min_gain=0.1)
    assert d.verdict == ex.INCONCLUSIVE and not d.passed and d.bar == 0.1 and d.power is not None


def test_decide_no_better_than_the_control():
    d = decide(iv(-0.02, -0.06, 0.0), iv(0.2, 0.1, 0.3), None, ENOUGH)
    assert d.verdict == ex.NO_BETTER and not d.passed
    # with a bar: an upper bound under it is "no better" too
    assert decide(iv(0.02, -0.01, 0.04), iv(0.2, 0.1, 0.3), None, ENOUGH, min_gain=0.05).verdict == ex.NO_BETTER


def test_decide_harmful():
    assert decide(iv(0.0, -0.1, 0.1), iv(-0.2, -0.3, -0.1), None, ENOUGH).verdict == ex.HARMFUL
    # a gain on the target with a retention loss beyond its interval is harmful (student ← aligned in the zoo)
    d = decide(iv(0.15, 0.05, 0.25), iv(0.10, 0.02, 0.18), iv(-0.23, -0.3, -0.16), ENOUGH)
    assert d.verdict == ex.HARMFUL and not d.passed and "retention" in d.reasons[0]
    # a retention dip whose interval reaches zero is not a loss
    assert decide(iv(0.15, 0.05, 0.25), iv(0.1, 0.02, 0.18), iv(-0.05, -0.1, 0.01), ENOUGH).verdict == ex.ADDS_SIGNAL


def test_decide_without_a_control_never_passes():
    d = decide(None, iv(0.3, 0.2, 0.4), None, ENOUGH)
    assert d.verdict == ex.GAIN_UNATTRIBUTED and not d.passed
    assert decide(None, iv(0.0, -0.05, 0.0), None, ENOUGH).verdict == ex.NO_GAIN


def test_a_three_step_run_never_passes():
    d = decide(iv(0.5, 0.4, 0.6), iv(0.5, 0.4, 0.6), None, Evidence(steps=3, problems=100, seeds=3))
    assert d.verdict == ex.INCONCLUSIVE and not d.passed and "3 OPD steps" in d.reasons[0]
    d = decide(iv(0.5, 0.4, 0.6), iv(0.5, 0.4, 0.6), None, Evidence(steps=100, problems=5, seeds=3))
    assert d.verdict == ex.INCONCLUSIVE and "5 eval problems" in d.reasons[0]


def test_decide_without_accuracy_is_inconclusive():
    d = decide(None, None, None, ENOUGH)
    assert d.verdict == ex.INCONCLUSIVE and "trends are not evidence" in d.reasons[0]


def test_gap_recovery():
    assert ex.gap_recovery(0.5, 0.2, 0.8) == pytest.approx(0.5)
    assert ex.gap_recovery(0.5, 0.2, 0.2) is None
