"""Knowledge-novelty estimates (design section 3): does the teacher know something the student does not?

- ``distinguishability``: pure; teacher-vs-teacher overlap and divergence at the same student states (paper §3.3:
  two teachers that look the same from the student's states teach the same thing).
- ``student_correct`` / ``continuation_gain``: with reference answers, the accuracy of the student's rollouts and
  of the teacher continuing the student's own prefixes cut at depth d (paper §6.1: +0.37 at 1K, +0.02 at 16K).
  Depth 0 is the teacher answering from the prompt: a higher teacher score is necessary, not sufficient.
- ``step0_grad_norm``: the gradient norm of the OPD top-k loss over the probe rollouts (app. B.2: a failing
  same-family teacher starts with a much smaller loss and gradient norm).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def distinguishability(
    student_topk_ids_NK: np.ndarray, teachers: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict:
    """Pairwise teacher comparison at the student's states.

    ``teachers``: name -> (teacher_topk_ids_NK, teacher_query_logprobs_NK), the second being the teacher's
    log-probs at the student's top-k ids. Returns {"teachers": names, "overlap": PxP mean |T_a ∩ T_b| / k,
    "kl": PxP symmetric top-k KL, nats/token}: ½(KL(ā‖b̄) + KL(b̄‖ā)) with ā, b̄ the two teachers' distributions
    renormalised on the student's top-k (the tokens OPD trains on).
    """
    names = list(teachers)
    n = len(names)
    k = student_topk_ids_NK.shape[1]
    overlap = np.eye(n)
    kl = np.zeros((n, n))
    logq = {}
    for name, (_, q_NK) in teachers.items():
        q = np.asarray(q_NK, dtype=np.float64)
        logq[name] = q - np.logaddexp.reduce(q, axis=1, keepdims=True)  # renormalise on the student's top-k
    for i in range(n):
        for j in range(i + 1, n):
            a_ids, b_ids = teachers[names[i]][0], teachers[names[j]][0]
            shared = (a_ids[:, :, None] == b_ids[:, None, :]).any(-1).sum(1) / k
            overlap[i, j] = overlap[j, i] = float(shared.mean())
            la, lb = logq[names[i]], logq[names[j]]
            kl_ab = (np.exp(la) * (la - lb)).sum(1).mean()
            kl_ba = (np.exp(lb) * (lb - la)).sum(1).mean()
            kl[i, j] = kl[j, i] = float((kl_ab + kl_ba) / 2)
    return {"teachers": names, "overlap": overlap.tolist(), "kl": kl.tolist()}


def indistinguishable_pairs(dist: dict, min_overlap: float, max_kl: float) -> dict[str, list[str]]:
    """name -> the other teachers it cannot be told apart from (overlap >= min and symmetric KL <= max)."""
    names = dist["teachers"]
    out: dict[str, list[str]] = {n: [] for n in names}
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i != j and dist["overlap"][i][j] >= min_overlap and dist["kl"][i][j] <= max_kl:
                out[a].append(b)
    return out


def student_correct(rollouts, answers: dict[int, str]) -> np.ndarray:
    """1.0/0.0 per rollout whose prompt has an answer (NaN where it has none)."""
    from .answers import is_correct

    return np.array([float(is_correct(r.response_text, answers[r.prompt_index])) if r.prompt_index in answers
                     else np.nan for r in rollouts])


def _se_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of mean(a) - mean(b) for paired 0/1 outcomes."""
    d = a - b
    return float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("inf")


def continuation_gain(teacher, rollouts, correct: np.ndarray, answers: dict[int, str], depths: Sequence[int],
                      max_new_tokens: int, seed: int, batch_size: int = 16) -> list[dict]:
    """Teacher accuracy when it continues the student's rollouts cut at each depth, vs the student's own.

    At depth d only rollouts longer than d take part (the student's continuation from the same prefix is the
    rest of its own rollout, so no student generation is needed). Sampling at temperature 1, like the rollouts;
    the teacher gets the student's remaining token budget. Returns one dict per depth with enough samples.
    """
    from .answers import is_correct
    from .backends.base import SamplingSettings

    out = []
    for d in depths:
        pick = [i for i, r in enumerate(rollouts) if r.prompt_index in answers and len(r.response_token_ids) > d]
        if not pick:
            continue
        budget = max(1, max_new_tokens - d)
        settings = SamplingSettings(samples=1, temperature=1.0, max_new_tokens=budget)
        teacher_ok = []
        for b0 in range(0, len(pick), batch_size):
            idx = pick[b0:b0 + batch_size]
            prefixes = [list(rollouts[i].prompt_token_ids) + list(rollouts[i].response_token_ids[:d]) for i in idx]
            gens = teacher.generate(prefixes, settings, seed=seed + 7919 * (d + 1) + b0)
            for i, g in zip(idx, gens):
                text = teacher.decode(list(rollouts[i].response_token_ids[:d]) + list(g[0].response_ids))
                teacher_ok.append(float(is_correct(text, answers[rollouts[i].prompt_index])))
        t, s = np.array(teacher_ok), correct[pick]
        out.append({"depth": int(d), "n": len(pick), "teacher_accuracy": float(t.mean()),
                    "student_accuracy": float(s.mean()), "gain": float(t.mean() - s.mean()), "se": _se_diff(t, s)})
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
