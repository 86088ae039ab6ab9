"""Pure math for cross-tokenizer pairs: the metrics of a student and a teacher that tokenize the same response text
differently (docs/cross-tokenizer.md). No models, no IO, no torch.

Every value is per *student* state (shape (N,), all rollouts concatenated), so cross-tokenizer pairs aggregate with
the same prompt bootstrap, depth buckets and reports as same-tokenizer pairs (metrics.aggregate). Values that do not
exist at a state are NaN and drop out of the means.

- Chunk level, exact: every student state carries its chunk's log p_S(chunk) - log p_T(chunk) divided by the
  chunk's student tokens, so the pooled mean is nats per student token, and is metrics' sampled_reverse_kl when
  both tokenize alike (every chunk one token); it is reported under that name.
- At aligned positions (align.py), approximate: top-k overlap and overlap masses over the tokens whose strings both
  vocabularies hold (the shared-string map), with the share of each model's top-k mass on shared strings (what
  exact-token matching sees: SimCT, arXiv 2605.07711, shows it can discard a large part of the teacher's signal),
  and the entropy gap, which compares next-token distributions over different token inventories.

Shapes: N = student states, M = teacher positions, K = top-k, V = teacher vocabulary, C = chunks.
"""

from __future__ import annotations

import numpy as np

from .align import chunk_sums
from .metrics import UNSUPPORTED_SUPPORT

# The metrics only cross-tokenizer pairs have: name -> (short description, higher_is_better).
CROSS_METRICS: dict[str, tuple[str, bool | None]] = {
    "aligned": ("share of student positions at a common boundary (comparable position by position)", True),
    "chunk_unsupported": ("share of student tokens in chunks the teacher gives < 5% of the student's probability",
                          False),
    "shared_mass_student": ("share of the student's top-k mass on strings the teacher's vocabulary holds", True),
    "shared_mass_teacher": ("share of the teacher's top-k mass on strings the student's vocabulary holds", True),
}

# How each metric of a cross-tokenizer pair is obtained: "exact", an approximation (with why), or "undefined"
# (needs the teacher's log-prob of the student's own token ids, which a teacher with another vocabulary does not
# have; NaN in every output). results.json pairs[].alignment.metrics carries this table.
_OVERLAP = ("approximate: only tokens whose strings both vocabularies hold can match (shared_mass_* says how much "
            "of each model's top-k mass that is), at aligned positions only")
_ENTROPY = ("approximate: the entropies are over different token inventories (a coarser tokenizer's next token "
            "carries more text), at aligned positions only")
_UNDEFINED = "undefined: needs the teacher's log-probs of the student's token ids"
HOW: dict[str, str] = {
    "aligned": "exact", "chunk_unsupported": "exact",
    "sampled_reverse_kl": "exact at chunk level: log p_S(chunk) - log p_T(chunk) per student token",
    "student_entropy": "exact", "topk_coverage_student": "exact",
    "teacher_entropy": "exact at aligned positions", "topk_coverage_teacher": "exact at aligned positions",
    "shared_mass_student": "exact at aligned positions", "shared_mass_teacher": "exact at aligned positions",
    "overlap_ratio": _OVERLAP, "overlap_mass_student": _OVERLAP, "overlap_mass_teacher": _OVERLAP,
    "top1_agreement": _OVERLAP, "entropy_gap": _ENTROPY, "entropy_gap_signed": _ENTROPY,
    "topk_reverse_kl": _UNDEFINED, "support_mass": _UNDEFINED, "unsupported": _UNDEFINED,
    "overlap_token_advantage": _UNDEFINED,
}
APPROXIMATE = tuple(m for m, h in HOW.items() if h.startswith("approximate"))


def cross_state_metrics(
    student_topk_ids_NK: np.ndarray,
    student_topk_logprobs_NK: np.ndarray,
    student_entropy_N: np.ndarray,
    student_sampled_logprob_N: np.ndarray,
    teacher_topk_ids_MK: np.ndarray,
    teacher_topk_logprobs_MK: np.ndarray,
    teacher_entropy_M: np.ndarray,
    teacher_sampled_logprob_M: np.ndarray,
    teacher_to_student_V: np.ndarray,
    student_shared_V: np.ndarray,
    teacher_at_N: np.ndarray,
    student_chunk_N: np.ndarray,
    teacher_chunk_M: np.ndarray,
    n_chunks: int,
) -> dict[str, np.ndarray]:
    """Every metric of metrics.METRICS and of ``CROSS_METRICS`` at every student state, shape (N,) each (HOW
    says how each is obtained; the undefined ones are NaN).

    ``teacher_to_student_V``: the student id of each teacher id's string, -1 where the student has no such token;
    ``student_shared_V``: does each student id's string exist in the teacher's vocabulary. ``teacher_at_N``: the
    teacher position aligned with each student state, -1 where none (global indices into the M axis);
    ``student_chunk_N`` / ``teacher_chunk_M``: global chunk ids in [0, n_chunks).
    """
    s_ids = np.asarray(student_topk_ids_NK, dtype=np.int64)
    s_lp = np.asarray(student_topk_logprobs_NK, dtype=np.float64)
    n, k = s_ids.shape
    at = np.asarray(teacher_at_N, dtype=np.int64)
    s_chunk = np.asarray(student_chunk_N, dtype=np.int64)
    if at.shape != (n,) or s_chunk.shape != (n,):
        raise ValueError(f"teacher_at_N and student_chunk_N must be ({n},)")

    # chunk level: exact log-probabilities of the same text under both tokenizations
    log_ratio_C = (chunk_sums(student_sampled_logprob_N, s_chunk, n_chunks)
                   - chunk_sums(teacher_sampled_logprob_M, teacher_chunk_M, n_chunks))
    student_tokens_C = np.bincount(s_chunk, minlength=n_chunks).astype(np.float64)
    # a chunk only one side has a token in (a response of text-less tokens) has no log-ratio
    both_C = (student_tokens_C > 0) & (np.bincount(teacher_chunk_M, minlength=n_chunks) > 0)
    chunk_kl_N = np.where(both_C, log_ratio_C / np.maximum(student_tokens_C, 1), np.nan)[s_chunk]
    unsupported_N = np.where(both_C, (log_ratio_C > -np.log(UNSUPPORTED_SUPPORT)).astype(np.float64), np.nan)[s_chunk]

    a = at >= 0
    h_p = np.asarray(student_entropy_N, dtype=np.float64)
    aligned = _aligned_metrics(s_ids[a], s_lp[a], h_p[a], np.asarray(teacher_topk_ids_MK, dtype=np.int64)[at[a]],
                               np.asarray(teacher_topk_logprobs_MK, dtype=np.float64)[at[a]],
                               np.asarray(teacher_entropy_M, dtype=np.float64)[at[a]],
                               np.asarray(teacher_to_student_V, dtype=np.int64), np.asarray(student_shared_V, bool))
    on_states = {}
    for name, values_A in aligned.items():
        on_states[name] = np.full(n, np.nan)
        on_states[name][a] = values_A
    undefined = np.full(n, np.nan)
    return {
        "aligned": a.astype(np.float64), "sampled_reverse_kl": chunk_kl_N, "chunk_unsupported": unsupported_N,
        "topk_reverse_kl": undefined, "support_mass": undefined, "unsupported": undefined,
        "overlap_token_advantage": undefined, **on_states,
        "student_entropy": h_p, "topk_coverage_student": np.exp(s_lp).sum(axis=1),
    }


def _aligned_metrics(s_ids_AK, s_lp_AK, h_p_A, t_ids_AK, t_lp_AK, h_q_A, t2s_V, shared_V) -> dict[str, np.ndarray]:
    """The position-level metrics at the A aligned states: the teacher's top-k at the same text point, its ids
    mapped to the student's by string (-1: no such student token)."""
    k = s_ids_AK.shape[1]
    mapped = t2s_V[t_ids_AK]
    p, q = np.exp(s_lp_AK), np.exp(t_lp_AK)
    in_teacher = ((s_ids_AK[:, :, None] == mapped[:, None, :]) & (mapped[:, None, :] >= 0)).any(axis=-1)
    in_student = ((mapped[:, :, None] == s_ids_AK[:, None, :]) & (mapped[:, :, None] >= 0)).any(axis=-1)
    cov_p, cov_q = p.sum(axis=1), q.sum(axis=1)
    return {
        "overlap_ratio": in_teacher.sum(axis=1) / k,
        "overlap_mass_student": np.where(in_teacher, p, 0.0).sum(axis=1),
        "overlap_mass_teacher": np.where(in_student, q, 0.0).sum(axis=1),
        "shared_mass_student": np.where(shared_V[s_ids_AK], p, 0.0).sum(axis=1) / cov_p,
        "shared_mass_teacher": np.where(mapped >= 0, q, 0.0).sum(axis=1) / cov_q,
        "top1_agreement": (s_ids_AK[:, 0] == mapped[:, 0]).astype(np.float64),
        "entropy_gap": np.abs(h_q_A - h_p_A),
        "entropy_gap_signed": h_q_A - h_p_A,
        "teacher_entropy": h_q_A,
        "topk_coverage_teacher": cov_q,
    }


def string_maps(student_strings: list[str | None], teacher_strings: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(teacher id -> student id of the same string or -1, shape (V_T,); does each student id's string exist in the
    teacher's vocabulary, shape (V_S,)). None marks an id with no string of its own (a partial UTF-8 byte piece):
    it is never shared. Where several student ids spell one string, the lowest id is the match."""
    first: dict[str, int] = {}
    for i, s in enumerate(student_strings):
        if s is not None and s not in first:
            first[s] = i
    t2s = np.array([first.get(s, -1) if s is not None else -1 for s in teacher_strings], dtype=np.int64)
    teacher_set = {s for s in teacher_strings if s is not None}
    shared = np.array([s is not None and s in teacher_set for s in student_strings], dtype=bool)
    return t2s, shared
