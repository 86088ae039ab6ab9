"""The shared orchestration stages (opd_probe/run/stages.py) that need no model: batching, sampling settings, the
Progress protocol. The stages that load models are exercised end to end by test_cli, test_gate, test_renderings
and test_select."""

from __future__ import annotations

import inspect

import numpy as np

from opd_probe.backends.base import SamplingSettings, ScoreArrays
from opd_probe.config import ProbeConfig
from opd_probe.run import stages
from opd_probe.run.select import SelectConfig


class FakeScorer:
    """Scores every position with its own (prompt, response) index, and records each batch it is handed."""

    def __init__(self):
        self.batches = []

    def score(self, prompts, responses, k, query_ids_LQ=None):
        self.batches.append([(tuple(p), tuple(r)) for p, r in zip(prompts, responses)])
        out = []
        for p, r, q in zip(prompts, responses, query_ids_LQ or [None] * len(prompts)):
            n = len(r)
            out.append(ScoreArrays(
                topk_ids_LK=np.full((n, k), p[0], dtype=np.int32), topk_logprobs_LK=np.zeros((n, k), np.float32),
                entropy_L=np.full(n, float(p[0]), np.float32), sampled_logprob_L=np.zeros(n, np.float32),
                query_logprobs_LQ=None if q is None else np.asarray(q, np.float32)))
        return out


def test_score_batched_keeps_order_and_budget():
    # pair i: prompt [i] (1 token), response of i + 1 tokens: sequence lengths 2..6
    prompts = [[i] for i in range(5)]
    responses = [[7] * (i + 1) for i in range(5)]
    model, advanced = FakeScorer(), []
    scored = stages.score_batched(model, prompts, responses, k=2, budget=8, advance=advanced.append)
    assert [int(s.entropy_L[0]) for s in scored] == [0, 1, 2, 3, 4]  # in the caller's order
    assert [len(s) for s in scored] == [1, 2, 3, 4, 5]
    for batch in model.batches:  # padded size: rows x longest, within the budget (longest first)
        assert len(batch) * max(len(p) + len(r) for p, r in batch) <= 8
    assert sorted(advanced) == sorted(len(b) for b in model.batches) and sum(advanced) == 5
    assert [p for p, _ in model.batches[0]] == [(4,)]  # 6 tokens: alone


def test_score_batched_passes_each_pairs_query():
    prompts, responses = [[0], [1]], [[5, 5], [6, 6, 6]]
    query = [np.array([[1.0], [2.0]]), np.array([[3.0], [4.0], [5.0]])]
    scored = stages.score_batched(FakeScorer(), prompts, responses, k=1, budget=100, query=query)
    assert [s.query_logprobs_LQ.ravel().tolist() for s in scored] == [[1.0, 2.0], [3.0, 4.0, 5.0]]


def test_sampling_settings_from_either_config():
    probe = ProbeConfig(student="s", teachers=("t",), out="o", samples=3, temperature=0.7, top_p=0.9,
                        max_new_tokens=33, seed=5, batch_size=7)
    assert stages.sampling_settings(probe, probe.samples) == SamplingSettings(
        samples=3, temperature=0.7, top_p=0.9, max_new_tokens=33, seed=5, batch_size=7)
    sel = SelectConfig(student="s", teacher="t", pool="p.jsonl", out="o.jsonl", keep=1, probe_samples=2,
                       batch_size=5)
    settings = stages.sampling_settings(sel, sel.probe_samples)
    assert settings.samples == 2 and settings.batch_size == 5
    assert stages.prompts_per_call(settings) == 2  # 5 sequences per call, 2 samples each
    assert stages.prompts_per_call(SamplingSettings(samples=8, batch_size=4)) == 1  # never zero


def test_null_progress_has_every_method_of_the_protocol():
    wanted = {n for n, _ in inspect.getmembers(stages.Progress, inspect.isfunction) if not n.startswith("_")}
    assert {"stage", "advance", "status", "log"} <= wanted
    for name in wanted:
        assert inspect.signature(getattr(stages.NullProgress, name)) == inspect.signature(
            getattr(stages.Progress, name))
