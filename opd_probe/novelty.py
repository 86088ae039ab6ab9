"""Knowledge-novelty estimates (docs/metrics.md): does the teacher know something the student does not?

- ``distinguishability``: pure; teacher-vs-teacher overlap and divergence at the same student states (paper §3.3:
  two teachers that look the same from the student's states teach the same thing).
- ``student_correct``: with reference answers, the accuracy of the student's rollouts;
  ``se_paired_diff``: the noise of a paired accuracy difference.

The estimates that need a model (continuation gain, step-0 gradient norm) are in run/evidence.py.
"""

from __future__ import annotations

import math

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


def se_paired_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of mean(a) - mean(b) for paired 0/1 outcomes."""
    d = a - b
    return float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("inf")
