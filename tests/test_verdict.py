"""Pure tests of the verdict rules (opd_probe.verdict.decide / rank_key) and of the thresholds module.

No models: every metric dict is made by hand. Every reason any test produces goes through ``checked``, which
asserts that it names its metric, value, threshold and direction, and that value and threshold agree with the
direction (a reader must be able to check a reason against results.json).
"""

from __future__ import annotations

import json
import operator
from dataclasses import fields, replace

import pytest

from opd_probe.errors import InputError
from opd_probe.config import read_config_file
from opd_probe.thresholds import PROVENANCE, Thresholds, load_thresholds
from opd_probe.types import ContinuationGain
from opd_probe.verdict import SEVERITY, STATUSES, Reason, Verdict, decide, rank_key

TH = Thresholds()
HEALTHY = {"overlap_mass_student": 0.98, "overlap_ratio": 0.75, "entropy_gap": 0.2, "topk_reverse_kl": 0.5,
           "unsupported": 0.0}
CODES = {"pattern-mismatch", "low-novelty", "weak-signal", "horizon-decay", "template-mismatch"}
DIRECTIONS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def check_reason(r: Reason) -> None:
    assert r.code in CODES, r
    assert r.severity in ("no-go", "caution", "info"), r
    assert isinstance(r.metric, str) and r.metric, r
    assert isinstance(r.message, str) and r.message, r
    assert isinstance(r.direction, str) and r.direction, r
    if r.severity == "info":
        return
    assert isinstance(r.value, (int, float)) and isinstance(r.threshold, (int, float)), r
    assert r.direction in DIRECTIONS, r
    assert DIRECTIONS[r.direction](r.value, r.threshold), f"{r.value} {r.direction} {r.threshold} is false: {r}"


def checked(v: Verdict) -> Verdict:
    """Check every reason of ``v`` and that the status is the most severe reason."""
    assert v.status in STATUSES
    for r in v.reasons:
        check_reason(r)
    worst = max((SEVERITY[r.severity] for r in v.reasons), default=0)
    assert SEVERITY[v.status] == worst
    assert len(set(v.recommendations)) == len(v.recommendations)
    return v


def run(pooled=None, th=TH, teacher="T", **kw) -> Verdict:
    return checked(decide(teacher, {**HEALTHY, **(pooled or {})}, th, **kw))


def codes(v: Verdict) -> list[tuple[str, str, str]]:
    return [(r.code, r.severity, r.metric) for r in v.reasons]


def cont(depth, gain, se=0.01, n=100, teacher_accuracy=None, student_accuracy=0.4) -> ContinuationGain:
    t = student_accuracy + gain if teacher_accuracy is None else teacher_accuracy
    return ContinuationGain(depth=depth, n=n, teacher_accuracy=t, student_accuracy=student_accuracy, gain=gain, se=se)


# ------------------------------------------------------------------------------------------------ go
def test_clean_go():
    v = run()
    assert v.status == "go"
    assert v.reasons == ()
    assert v.recommendations == ()
    assert v.teacher == "T"


def test_go_with_real_continuation_gain_and_flat_depth():
    v = run(continuation=[cont(0, 0.3, se=0.05), cont(256, 0.2)],
            depth_overlap=[(0, 500, 0.75), (256, 400, 0.74), (512, 300, 0.72)])
    assert v.status == "go" and v.reasons == ()


# ------------------------------------------------------------------------------------------------ pattern-mismatch
def test_pattern_mismatch_nogo_when_the_teacher_rules_out_the_students_tokens():
    v = run({"unsupported": 0.3})
    assert v.status == "no-go"
    assert codes(v) == [("pattern-mismatch", "no-go", "unsupported")]
    r = v.reasons[0]
    assert (r.value, r.threshold, r.direction) == (0.3, TH.unsupported_nogo, ">")


def test_low_overlap_alone_no_longer_warns():
    # validation benchmark, dev family: mass 0.61, ratio 0.37 from a teacher that supports the student's tokens, and
    # OPD gained +0.94 (docs/validation.md): near-equal tokens make the overlap a matter of chance
    v = run({"overlap_mass_student": 0.61, "overlap_ratio": 0.37, "unsupported": 0.005})
    assert v.status == "go" and v.reasons == ()


def test_entropy_gap_is_read_even_with_a_nogo():
    v = run({"unsupported": 0.3, "entropy_gap": 1.5})
    assert codes(v) == [("pattern-mismatch", "no-go", "unsupported"),
                        ("pattern-mismatch", "caution", "entropy_gap")]
    assert v.status == "no-go"


def test_pattern_mismatch_caution_via_entropy_gap():
    v = run({"entropy_gap": 1.4})
    assert v.status == "caution"
    assert codes(v) == [("pattern-mismatch", "caution", "entropy_gap")]
    r = v.reasons[0]
    assert (r.value, r.threshold, r.direction) == (1.4, TH.entropy_gap_caution, ">")


def test_pattern_mismatch_recommends_a_cold_start_with_the_rollout_count():
    th = replace(TH, cold_start_rollouts=1234)
    v = run({"unsupported": 0.3}, th=th)
    cold = [r for r in v.recommendations if "cold start" in r]
    assert cold and "--cold-start 1234" in cold[0]
    assert "--cold-start 2000" in " ".join(run({"unsupported": 0.3}).recommendations)


def test_missing_metrics_trip_nothing():
    v = checked(decide("T", {}, TH))
    assert v.status == "go" and v.reasons == ()


# ------------------------------------------------------------------------------------------------ low-novelty
@pytest.mark.parametrize("gain", [-0.11, -0.3])
def test_low_novelty_nogo_when_the_teacher_is_clearly_less_accurate(gain):
    v = run(continuation=[cont(0, gain, se=0.05), cont(256, 0.2)])
    assert v.status == "no-go"
    assert codes(v) == [("low-novelty", "no-go", "continuation_gain@0")]
    r = v.reasons[0]
    assert r.value == gain and r.threshold == pytest.approx(-0.1) and r.direction == "<"
    assert any("another teacher" in rec for rec in v.recommendations)


@pytest.mark.parametrize("gain", [0.08, 0.0, -0.09])
def test_low_novelty_caution_when_the_depth0_gain_is_under_the_minimum(gain):
    # dev family: OPD worked from every teacher at +0.17 or more and from none at +0.08 or less
    v = run(continuation=[cont(0, gain, se=0.045)])
    assert v.status == "caution"
    assert codes(v) == [("low-novelty", "caution", "continuation_gain@0")]
    assert (v.reasons[0].value, v.reasons[0].threshold, v.reasons[0].direction) == (gain, TH.min_answer_gain, "<")
    assert any("verify" in rec for rec in v.recommendations)


def test_low_novelty_is_info_when_a_gain_over_the_minimum_is_within_noise():
    v = run(continuation=[cont(0, 0.15, se=0.1)])  # few prompts: 2 se = 0.2
    assert v.status == "go"
    assert codes(v) == [("low-novelty", "info", "continuation_gain@0")]
    assert v.reasons[0].threshold == pytest.approx(0.2)


def test_low_novelty_caution_when_no_depth_has_a_gain_above_the_minimum():
    v = run(continuation=[cont(0, 0.3, se=0.05), cont(256, 0.01), cont(512, 0.015)])
    # a clear depth-0 gain is knowledge: the deeper-prefix rule does not apply
    assert all(r.code != "low-novelty" for r in v.reasons)
    v = run(continuation=[cont(256, 0.01), cont(512, 0.015)])  # no depth 0 probed
    assert v.status == "caution"
    assert codes(v) == [("low-novelty", "caution", "continuation_gain@512")]  # names the best depth
    r = v.reasons[0]
    assert r.value == 0.015 and r.threshold == TH.min_continuation_gain


def test_low_novelty_caution_at_exactly_the_minimum():
    v = run(continuation=[cont(256, TH.min_continuation_gain)])
    assert codes(v) == [("low-novelty", "caution", "continuation_gain@256")]


def test_no_low_novelty_when_a_depth_has_a_real_gain():
    v = run(continuation=[cont(256, 0.01), cont(1024, 0.3)])
    assert v.status == "go" and v.reasons == ()
    v = run(continuation=[cont(0, 0.4, se=0.05)])
    assert v.status == "go" and v.reasons == ()


# ------------------------------------------------------------------------------------------------ weak-signal
def test_weak_signal_absolute():
    v = run({"topk_reverse_kl": 0.005})
    assert v.status == "caution"
    assert codes(v) == [("weak-signal", "caution", "topk_reverse_kl")]
    r = v.reasons[0]
    assert (r.value, r.threshold, r.direction) == (0.005, TH.weak_signal_kl, "<")
    assert any("--continuation-depths" in rec for rec in v.recommendations)


def test_weak_signal_without_novelty_evidence_asks_for_answers_only_when_novelty_unknown():
    v = run({"topk_reverse_kl": 0.005}, continuation=[cont(0, 0.3, se=0.05)])
    assert codes(v) == [("weak-signal", "caution", "topk_reverse_kl")]
    assert not any("--continuation-depths" in rec for rec in v.recommendations)


def test_weak_signal_is_absolute_only_and_kept_beside_a_pattern_mismatch():
    # a teacher's status never depends on the other candidates: no rule takes their KL any more
    assert run({"topk_reverse_kl": 0.1}).reasons == ()
    v = run({"topk_reverse_kl": 0.001, "unsupported": 0.3})
    assert [c for c, _, _ in codes(v)] == ["pattern-mismatch", "weak-signal"]


def test_a_removed_threshold_in_a_config_says_why():
    with pytest.raises(InputError) as e:
        load_thresholds({"weak_signal_relative": 0.25})
    assert "no longer exists" in e.value.message and "other teachers" in e.value.message
    assert "delete weak_signal_relative" in e.value.fix
    for gone in ("overlap_nogo", "overlap_caution", "mass_nogo", "mass_caution", "ratio_max_coverage"):
        with pytest.raises(InputError, match="near-equal tokens"):
            load_thresholds({gone: 0.5})


def test_indistinguishable_teachers_are_named_in_the_reason_and_a_recommendation():
    v = run({"topk_reverse_kl": 0.001}, teacher="A", indistinguishable_from=["B", "C"])
    weak = [r for r in v.reasons if r.code == "weak-signal"]
    assert len(weak) == 1 and "B, C" in weak[0].message and "indistinguishable" in weak[0].message
    recs = [r for r in v.recommendations if "teaches the same as" in r]
    assert recs == ["A teaches the same as B, C from the student's states: prefer the cheapest of them"]
    # the recommendation is there without a weak signal too, but not the reason
    v = run(teacher="A", indistinguishable_from=["B"])
    assert v.reasons == () and v.status == "go"
    assert any("A teaches the same as B" in r for r in v.recommendations)


# ------------------------------------------------------------------------------------------------ horizon-decay
def test_horizon_decay():
    n = TH.horizon_min_states
    v = run(depth_overlap=[(0, n, 0.80), (256, n, 0.75), (512, n, 0.62), (768, n, 0.70)])
    assert v.status == "caution"
    assert codes(v) == [("horizon-decay", "caution", "overlap_ratio@512")]
    r = v.reasons[0]
    assert r.value == pytest.approx(0.18) and r.threshold == TH.horizon_drop and r.direction == ">"
    recs = [rec for rec in v.recommendations if "response length" in rec]
    assert recs and "512" in recs[0]


def test_no_horizon_decay_for_small_drops_or_thin_buckets():
    n = TH.horizon_min_states
    assert run(depth_overlap=[(0, n, 0.80), (256, n, 0.75)]).reasons == ()  # drop 0.05
    # the deep bucket drops a lot but has too few states to be trusted
    assert run(depth_overlap=[(0, n, 0.80), (256, n, 0.78), (512, n - 1, 0.30)]).reasons == ()
    # only one trusted bucket
    assert run(depth_overlap=[(0, n, 0.80), (256, 3, 0.30)]).reasons == ()
    # a thin first bucket is skipped: the first trusted one is the reference
    v = run(depth_overlap=[(0, 3, 0.99), (256, n, 0.80), (512, n, 0.75)])
    assert v.reasons == ()


# ------------------------------------------------------------------------------------------------ template-mismatch
def test_template_mismatch_is_info_only():
    v = run(template_differs=True)
    assert v.status == "go"
    assert codes(v) == [("template-mismatch", "info", "chat_template_hash")]
    assert v.reasons[0].value is None and v.reasons[0].threshold is None
    assert any("template" in rec for rec in v.recommendations)
    # with a caution, the status is the caution
    assert run({"topk_reverse_kl": 0.001}, template_differs=True).status == "caution"


def test_severities_combine_to_the_worst():
    v = run({"unsupported": 0.3, "topk_reverse_kl": 0.001}, continuation=[cont(0, -0.2)],
            depth_overlap=[(0, 100, 0.8), (256, 100, 0.5)], template_differs=True, indistinguishable_from=["X"])
    assert v.status == "no-go"
    assert {c for c, _, _ in codes(v)} == CODES


# ------------------------------------------------------------------------------------------------ rank_key
def test_rank_key_orders_status_first():
    strong = {"overlap_mass_student": 0.99, "overlap_ratio": 0.9}
    weak = {"overlap_mass_student": 0.5, "overlap_ratio": 0.2}
    keys = {s: rank_key(s, strong if s == "no-go" else weak, [cont(0, 0.9 if s == "no-go" else 0.0)])
            for s in STATUSES}
    assert sorted(keys, key=keys.get) == ["go", "caution", "no-go"]


def test_rank_key_within_a_status_prefers_gain_then_mass_then_ratio():
    pooled = {"overlap_mass_student": 0.95, "overlap_ratio": 0.7}
    hi_gain = rank_key("go", {**pooled, "overlap_mass_student": 0.9}, [cont(0, 0.1), cont(256, 0.3)])
    lo_gain = rank_key("go", pooled, [cont(0, 0.2)])
    assert hi_gain < lo_gain  # best gain 0.3 beats 0.2, whatever the mass
    hi_mass = rank_key("caution", {**pooled, "overlap_mass_student": 0.97}, None)
    lo_mass = rank_key("caution", pooled, None)
    assert hi_mass < lo_mass
    hi_ratio = rank_key("caution", {**pooled, "overlap_ratio": 0.8}, None)
    assert hi_ratio < lo_mass
    # a missing or NaN metric ranks last
    assert lo_mass < rank_key("caution", {"overlap_mass_student": float("nan")}, None)
    assert lo_mass < rank_key("caution", {}, None)


# ------------------------------------------------------------------------------------------------ round trip
def test_verdict_round_trips_through_json():
    v = run({"unsupported": 0.3, "topk_reverse_kl": 0.001}, continuation=[cont(0, 0.05, se=0.04)],
            depth_overlap=[(0, 100, 0.8), (256, 100, 0.5)], template_differs=True, indistinguishable_from=["X"])
    d = json.loads(json.dumps(v.to_dict()))
    assert Verdict.from_dict(d) == v
    assert Verdict.from_dict(d).to_dict() == v.to_dict()
    assert set(d) == {"teacher", "status", "reasons", "recommendations"}
    assert set(d["reasons"][0]) == {"code", "severity", "metric", "value", "threshold", "direction", "message"}


# ------------------------------------------------------------------------------------------------ thresholds
def test_every_threshold_has_provenance():
    names = {f.name for f in fields(Thresholds)}
    assert names == set(PROVENANCE)
    assert all(isinstance(PROVENANCE[n], str) and PROVENANCE[n].strip() for n in names)


def test_load_thresholds_defaults_file_and_overrides():
    assert load_thresholds() == Thresholds()
    th = load_thresholds({"unsupported_nogo": 0.4, "min_answer_gain": 0.07, "horizon_min_states": 10},
                         ["unsupported_nogo=0.3", " weak_signal_kl = 0.5 "])
    assert th.unsupported_nogo == 0.3  # the flag beats the file
    assert th.min_answer_gain == 0.07
    assert th.weak_signal_kl == 0.5
    assert th.horizon_min_states == 10 and isinstance(th.horizon_min_states, int)
    assert th.entropy_gap_caution == Thresholds().entropy_gap_caution
    # numeric strings from a file are accepted; ints become floats where the field is a float
    th = load_thresholds({"unsupported_nogo": "0.45", "entropy_gap_caution": 2})
    assert th.unsupported_nogo == 0.45 and th.entropy_gap_caution == 2.0
    assert isinstance(th.entropy_gap_caution, float)
    assert load_thresholds(None, ["cold_start_rollouts=500"]).cold_start_rollouts == 500


@pytest.mark.parametrize("file_values,overrides,needle", [
    ({"unsupported_nogoo": 0.4}, None, "unsupported_nogoo"),
    (None, ["nonsense=1"], "nonsense"),
    ({"unsupported_nogo": "high"}, None, "unsupported_nogo"),
    ({"unsupported_nogo": [0.4]}, None, "unsupported_nogo"),
    (None, ["unsupported_nogo=abc"], "unsupported_nogo"),
    (None, ["horizon_min_states=2.5"], "horizon_min_states"),
    (None, ["unsupported_nogo"], "NAME=VALUE"),
])
def test_load_thresholds_rejects_bad_input(file_values, overrides, needle):
    with pytest.raises(InputError) as e:
        load_thresholds(file_values, overrides)
    assert needle in e.value.message
    assert e.value.fix


def test_read_config_file_from_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.opd-probe]\nsamples = 2\nfail_on = ["no-go"]\n\n'
        '[tool.opd-probe.thresholds]\nunsupported_nogo = 0.4\n')
    table, source = read_config_file(None, cwd=tmp_path)
    assert table == {"samples": 2, "fail_on": ["no-go"], "thresholds": {"unsupported_nogo": 0.4}}
    assert source == str(tmp_path / "pyproject.toml")
    assert load_thresholds(table["thresholds"]).unsupported_nogo == 0.4


def test_read_config_file_without_a_table_or_a_file(tmp_path):
    assert read_config_file(None, cwd=tmp_path) == ({}, None)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert read_config_file(None, cwd=tmp_path)[0] == {}


def test_read_config_file_standalone(tmp_path):
    top = tmp_path / "top.toml"
    top.write_text('samples = 3\n[thresholds]\nunsupported_nogo = 0.7\n')
    table, source = read_config_file(str(top))
    assert table == {"samples": 3, "thresholds": {"unsupported_nogo": 0.7}} and source == str(top)
    nested = tmp_path / "nested.toml"
    nested.write_text('[tool.opd-probe]\nsamples = 5\n[tool.opd-probe.thresholds]\nunsupported_nogo = 0.6\n')
    assert read_config_file(str(nested))[0] == {"samples": 5, "thresholds": {"unsupported_nogo": 0.6}}


def test_read_config_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("samples = = 3\n")
    with pytest.raises(InputError, match="not valid TOML"):
        read_config_file(str(bad))
    (tmp_path / "pyproject.toml").write_text("[tool.opd-probe\n")
    with pytest.raises(InputError, match="not valid TOML"):
        read_config_file(None, cwd=tmp_path)
    with pytest.raises(InputError, match="not found"):
        read_config_file(str(tmp_path / "missing.toml"))


def test_a_reason_resting_on_an_estimate_says_so_and_round_trips():
    v = run({"entropy_gap": TH.entropy_gap_caution + 0.1, "unsupported": TH.unsupported_nogo + 0.01},
            approximate={"entropy_gap"})
    by = {r.metric: r for r in v.reasons}
    assert by["entropy_gap"].approximate and by["entropy_gap"].message.endswith("(value approximate: see the warnings)")
    assert not by["unsupported"].approximate and "approximate" not in by["unsupported"].message
    d = json.loads(json.dumps(v.to_dict()))
    assert [r.get("approximate", False) for r in d["reasons"]] == [r.approximate for r in v.reasons]
    assert Verdict.from_dict(d) == v


def test_novelty_round_trips_and_omits_what_was_not_probed():
    from opd_probe.types import Novelty

    assert Novelty().to_dict() == {}
    n = Novelty(continuation=(cont(0, 0.1), cont(256, -0.05)), grad_norm=0.25)
    d = json.loads(json.dumps(n.to_dict()))
    assert d["continuation"][1] == {"depth": 256, "n": 100, "teacher_accuracy": pytest.approx(0.35),
                                    "student_accuracy": 0.4, "gain": -0.05, "se": 0.01}
    assert Novelty.from_dict(d) == n and Novelty.from_dict({"grad_norm": 1.0}) == Novelty(grad_norm=1.0)


def test_verdicts_of_a_run_do_not_depend_on_the_other_candidates():
    """A weak teacher (step-0 KL 0.05) beside a strong one (1.0) gets the verdict it gets alone: the rule that
    compared it with the strongest candidate in the run is gone (it flagged this teacher only in the set)."""
    from opd_probe.metrics import Estimate
    from opd_probe.run.probe import _with_verdicts
    from opd_probe.types import PairResult

    def pair(name, kl):
        pooled = {m: Estimate(v, v, v, 100) for m, v in {**HEALTHY, "topk_reverse_kl": kl}.items()}
        return PairResult(teacher=name, slug=name, model={}, pooled=pooled, depth=(), per_prompt={})

    weak, strong = pair("weak", 0.05), pair("strong", 1.0)
    in_set = {p.teacher: p.verdict for p in _with_verdicts([weak, strong], TH, None, {})}
    alone = _with_verdicts([weak], TH, None, {})[0].verdict
    assert in_set["weak"] == alone and alone.status == "go"
