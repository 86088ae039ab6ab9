"""compare's measured lint of one teacher, while it is loaded (lint.py holds the math; docs/lint.md).

Cost: the stop-token agreement reads the scores already computed; the renderer bias reuses the scores of
``--template student,teacher`` when both renderings were scored, else scores the first LINT_PROMPTS prompts (one
rollout each) under the missing rendering, and nothing at all when the renderings give the same ids; the
determinism check scores DETERMINISM_SEQUENCES short sequences four ways.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Sequence

import numpy as np

from .. import lint
from ..backends.base import ScoreArrays
from ..errors import InputError
from ..types import ProbePrompt, Rollout
from .stages import score_batched

LINT_PROMPTS = 8  # renderer bias without --template student,teacher: the first 8 prompts, one rollout each
DETERMINISM_SEQUENCES = 4  # the determinism batch: the first rollout of the first 4 prompts ...
DETERMINISM_MAX_TOKENS = 128  # ... each cut to its first 128 response tokens


def measure_lint(teacher, rollouts: list[Rollout], prompts: Sequence[ProbePrompt], by_template: dict,
                 student_scores: ScoreArrays, primary: str, *, budget: int, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> lint.Lint:
    """The three lint measurements of ``teacher`` on the probe's rollouts. ``by_template``: its scores under each
    rendering ({template: (ScoreArrays, timing)}, renderings.score_templates); ``primary``: the one the verdict
    reads."""
    t0 = time.perf_counter()
    offsets = np.concatenate([[0], np.cumsum([len(r.response_token_ids) for r in rollouts])]).astype(np.int64)
    n_prompts = max(r.prompt_index for r in rollouts) + 1
    bias = _renderer_bias(teacher, rollouts, prompts, by_template, offsets, n_prompts, budget, n_boot, seed, level)
    stop = _stop_agreement(rollouts, by_template[primary][0], student_scores, offsets, n_prompts, n_boot, seed,
                           level)
    det = determinism(teacher, rollouts, first_per_prompt(rollouts, DETERMINISM_SEQUENCES))
    return lint.Lint(bias, stop, det, seconds=time.perf_counter() - t0)


def first_per_prompt(rollouts: list[Rollout], n: int) -> list[int]:
    """Positions of the first rollout of each of the first ``n`` prompts that have one."""
    seen, out = set(), []
    for i, r in enumerate(rollouts):
        if r.prompt_index not in seen and r.response_token_ids:
            seen.add(r.prompt_index)
            out.append(i)
            if len(out) == n:
                break
    return out


def _stop_agreement(rollouts, t: ScoreArrays, s: ScoreArrays, offsets, n_prompts, n_boot, seed, level):
    """At the last response position of every rollout that stopped, the sampled token is the stop token."""
    stopped = [i for i, r in enumerate(rollouts) if r.finish_reason == "stop" and r.response_token_ids]
    at = offsets[np.array(stopped, dtype=np.int64) + 1] - 1 if stopped else np.zeros(0, dtype=np.int64)
    return lint.stop_agreement(t.sampled_logprob_L[at], s.sampled_logprob_L[at],
                               np.array([rollouts[i].prompt_index for i in stopped], dtype=np.int64), n_prompts,
                               n_boot=n_boot, seed=seed, level=level)


def _renderer_bias(teacher, rollouts, prompts, by_template, offsets, n_prompts, budget, n_boot, seed,
                   level) -> lint.RendererBias:
    if "student" in by_template and "teacher" in by_template:  # --template student,teacher: free
        s, t = by_template["student"][0], by_template["teacher"][0]
        if s is t:  # the renderings gave the same ids: the same scores
            return lint.RendererBias("identical", 0.0, 0.0, 0.0, len(s), n_prompts, "all rollouts (same token ids)",
                                     note="the teacher's own template renders every prompt to the student's ids")
        prompt_N = np.repeat([r.prompt_index for r in rollouts], np.diff(offsets))
        return lint.renderer_bias(s.sampled_logprob_L, t.sampled_logprob_L, prompt_N, n_prompts,
                                  "all rollouts (--template student,teacher)", n_boot, seed, level)
    if not teacher.info.get("chat_template_hash"):
        return lint.RendererBias("unavailable", note="the teacher has no chat template: it has no own rendering")
    by_index = {p.index: p for p in prompts}
    subset = [i for i in first_per_prompt(rollouts, LINT_PROMPTS) if rollouts[i].prompt_index in by_index]
    if not subset:
        return lint.RendererBias("unavailable", note="the probe prompts are not known (a reused run without "
                                                     "prompts.jsonl)")
    try:
        own = {i: tuple(teacher.render(by_index[rollouts[i].prompt_index], True)) for i in subset}
    except InputError as e:
        return lint.RendererBias("unavailable", note=f"the teacher's template cannot render the prompts: {e.message}")
    source = f"the first {len(subset)} prompts, one rollout each"
    if all(own[i] == rollouts[i].prompt_token_ids for i in subset):
        n = int(sum(offsets[i + 1] - offsets[i] for i in subset))
        return lint.RendererBias("identical", 0.0, 0.0, 0.0, n, len(subset), source,
                                 note="the teacher's own template renders these prompts to the student's ids")
    ctx = teacher.context_length()
    subset = [i for i in subset if ctx is None or len(own[i]) + len(rollouts[i].response_token_ids) <= ctx]
    if not subset:
        return lint.RendererBias("unavailable", note="the teacher's own rendering does not fit its context")
    # score the rendering that was not scored, on the subset; the other side is in the run's scores
    have_template, (have, _) = next(iter(by_template.items()))
    missing = [replace(rollouts[i], prompt_token_ids=own[i]) if have_template == "student" else rollouts[i]
               for i in subset]
    scored = score_batched(teacher, [r.prompt_token_ids for r in missing], [r.response_token_ids for r in missing],
                           1, budget)
    kept = np.concatenate([have.sampled_logprob_L[offsets[i]:offsets[i + 1]] for i in subset])
    new = np.concatenate([x.sampled_logprob_L for x in scored])
    s, t = (kept, new) if have_template == "student" else (new, kept)
    prompt_N = np.repeat([rollouts[i].prompt_index for i in subset], [offsets[i + 1] - offsets[i] for i in subset])
    return lint.renderer_bias(s, t, prompt_N, n_prompts, source, n_boot, seed, level)


def determinism(teacher, rollouts: list[Rollout], positions: list[int],
                max_tokens: int = DETERMINISM_MAX_TOKENS) -> lint.Determinism:
    """Score the same short sequences (``positions`` in ``rollouts``, responses cut to ``max_tokens``) as one batch
    twice, reversed, and one at a time: four calls of ``teacher.score``; the largest change of the sampled-token
    and top-k log-probs between the first scoring and each other."""
    if not positions:
        return lint.Determinism("unavailable", note="no rollout with a response")
    prompts = [rollouts[i].prompt_token_ids for i in positions]
    responses = [rollouts[i].response_token_ids[:max_tokens] for i in positions]
    k = min(4, teacher.vocab_size)

    def values(scored: list[ScoreArrays]) -> list[np.ndarray]:
        return [np.concatenate([x.sampled_logprob_L[:, None], x.topk_logprobs_LK], axis=1) for x in scored]

    first = values(teacher.score(prompts, responses, k=k))
    again = values(teacher.score(prompts, responses, k=k))
    reversed_ = values(teacher.score(prompts[::-1], responses[::-1], k=k))[::-1]
    alone = [values(teacher.score([p], [r], k=k))[0] for p, r in zip(prompts, responses)]
    return lint.Determinism(
        "measured", len(positions), int(sum(len(r) for r in responses)), lint.max_abs_diff(first, again),
        max(lint.max_abs_diff(first, reversed_), lint.max_abs_diff(first, alone)), ("reversed", "alone"))
