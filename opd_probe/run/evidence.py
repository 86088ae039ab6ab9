"""Knowledge-novelty evidence that needs a model (the pure part is novelty.py).

- ``continuation_gain``: with reference answers, the accuracy of the teacher continuing the student's own prefixes
  cut at depth d, vs the student's (arXiv 2604.13016 §6.1: +0.37 at 1K, +0.02 at 16K). Depth 0 is the teacher
  answering from the prompt: a higher teacher score is necessary, not sufficient.
- ``step0_grad_norm``: the gradient norm of the OPD top-k loss over the probe rollouts (arXiv 2604.13016 app. B.2:
  a failing same-family teacher starts with a much smaller loss and gradient norm).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..answers import is_correct
from ..backends.base import SamplingSettings
from ..novelty import se_paired_diff
from ..types import ContinuationGain


def continuation_gain(teacher, rollouts, correct: np.ndarray, answers: dict[int, str], depths: Sequence[int],
                      max_new_tokens: int, seed: int, batch_size: int = 16,
                      depth_map: Sequence[np.ndarray] | None = None) -> list[ContinuationGain]:
    """Teacher accuracy when it continues the student's rollouts cut at each depth, vs the student's own.

    At depth d only rollouts longer than d take part (the student's continuation from the same prefix is the
    rest of its own rollout, so no student generation is needed). Sampling at temperature 1, like the rollouts;
    the teacher gets the student's remaining token budget. Returns one ContinuationGain per depth with enough samples.

    ``depth_map`` (a teacher with another tokenizer: ``rollouts`` are the teacher's tokenization of the student's,
    run/cross.py): per rollout, the teacher position where the student's prefix of each length is cut (at its last
    common boundary); depths count the student's tokens.
    """
    out = []
    cut = (lambda i, d: int(depth_map[i][d])) if depth_map is not None else (lambda i, d: d)  # noqa: E731
    length = ((lambda i: len(depth_map[i]) - 1) if depth_map is not None  # noqa: E731
              else (lambda i: len(rollouts[i].response_token_ids)))
    for d in depths:
        pick = [i for i, r in enumerate(rollouts) if r.prompt_index in answers and length(i) > d]
        if not pick:
            continue
        budget = max(1, max_new_tokens - d)
        settings = SamplingSettings(samples=1, temperature=1.0, max_new_tokens=budget)
        teacher_ok = []
        for b0 in range(0, len(pick), batch_size):
            idx = pick[b0:b0 + batch_size]
            prefixes = [list(rollouts[i].prompt_token_ids) + list(rollouts[i].response_token_ids[:cut(i, d)])
                        for i in idx]
            gens = teacher.generate(prefixes, settings, seed=seed + 7919 * (d + 1) + b0)
            for i, g in zip(idx, gens):
                text = teacher.decode(list(rollouts[i].response_token_ids[:cut(i, d)]) + list(g[0].response_ids))
                teacher_ok.append(float(is_correct(text, answers[rollouts[i].prompt_index])))
        t, s = np.array(teacher_ok), correct[pick]
        out.append(ContinuationGain(depth=int(d), n=len(pick), teacher_accuracy=float(t.mean()),
                                    student_accuracy=float(s.mean()), gain=float(t.mean() - s.mean()),
                                    se=se_paired_diff(t, s)))
    return out


def step0_grad_norm(student, rollouts, student_topk_ids_NK: np.ndarray, teacher_query_logprobs_NK: np.ndarray,
                    batch_tokens: int = 4096) -> float:
    """‖∇‖ of the token-mean OPD top-k surrogate over all probe rollouts (verify.opd_loss's loss at step 0).

    Uses the top-k ids saved by the probe (so the support is exactly the one the metrics used) and the teacher's
    saved log-probs there: no teacher model is needed. Micro-batched by tokens; gradients accumulate.
    """
    import torch

    model = student.model
    model.eval()  # no dropout; gradients still flow
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    n_states = int(student_topk_ids_NK.shape[0])
    offsets = np.concatenate([[0], np.cumsum([len(r.response_token_ids) for r in rollouts])])
    batch: list[int] = []

    def flush(batch):
        lo, hi = offsets[batch[0]], offsets[batch[-1] + 1]  # batches are contiguous rollout ranges
        logp, _ = student.response_logprobs([rollouts[i].prompt_token_ids for i in batch],
                                            [rollouts[i].response_token_ids for i in batch])
        ids = torch.from_numpy(student_topk_ids_NK[lo:hi].astype(np.int64)).to(logp.device)
        lp = logp.gather(-1, ids)
        q = torch.from_numpy(teacher_query_logprobs_NK[lo:hi].astype(np.float32)).to(logp.device)
        w = torch.softmax(lp.detach(), -1)
        ((w * (lp.detach() - q) * lp).sum() / n_states).backward()

    tokens = 0
    for i, r in enumerate(rollouts):
        length = len(r.prompt_token_ids) + len(r.response_token_ids)
        if batch and tokens + length > batch_tokens:
            flush(batch)
            batch, tokens = [], 0
        batch.append(i)
        tokens += length
    if batch:
        flush(batch)
    norm = math.sqrt(sum(float((p.grad.float() ** 2).sum()) for p in params if p.grad is not None))
    model.zero_grad(set_to_none=True)
    return norm
