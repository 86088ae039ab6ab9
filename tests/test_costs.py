"""opd_probe.costs (pure): the cost projection of a planned OPD run, by hand."""

from __future__ import annotations

import json

import pytest

from opd_probe import costs



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




def test_projection_round_trips_through_json():
    p = _project(sampling_tokens_per_second=None)
    d = json.loads(json.dumps(p.to_dict()))
    assert d["sampling"] == {"tokens_per_second": None, "seconds": {"low": None, "high": None},
                             "hours": {"low": None, "high": None}}
    assert d["teachers"]["T"]["hours"] == {"low": pytest.approx(28 / 3600), "high": pytest.approx(48 / 3600)}
    assert costs.Projection.from_dict(d) == p
