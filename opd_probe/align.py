"""Pure: two tokenizations of one text, aligned at their common boundaries (cross-tokenizer pairs;
docs/cross-tokenizer.md).

A teacher with another tokenizer cannot score the student's token ids; it scores its own tokenization of the
student's response *text*. Both tokenizations cut the text somewhere: a *common boundary* is a character offset
where a token of each starts. Between two consecutive common boundaries lies a *chunk*: one or more student tokens
and one or more teacher tokens spelling the same text, so log p_S(chunk) - log p_T(chunk) is exact (the chunk-level
sampled reverse KL that chunk-alignment trainers train on). At a common boundary both models predict the next token
after the same text: that is where their next-token distributions can be compared (an *aligned position*).

Shapes: S = student tokens of one response, T = teacher tokens, C = chunks. Offsets are character offsets into the
response text; a token's start is where its text begins (a token that adds no text, such as a special token inside
the response, starts where the next one does). An end-of-sequence token is a token that starts at the text's end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Alignment:
    """One response under both tokenizations.

    ``common_C``: the common boundaries (character offsets, increasing; the first is 0), one per chunk.
    ``student_chunk_S`` / ``teacher_chunk_T``: the chunk of every token. ``teacher_at_S``: the teacher position at
    the same text point as each student position, -1 where the student position is not aligned (its text point is
    not a common boundary, or an earlier student token starts at the same point).
    """

    common_C: np.ndarray  # int64
    student_chunk_S: np.ndarray  # int64
    teacher_chunk_T: np.ndarray  # int64
    teacher_at_S: np.ndarray  # int64, -1 = not aligned

    @property
    def n_chunks(self) -> int:
        return int(self.common_C.shape[0])

    @property
    def aligned_S(self) -> np.ndarray:
        return self.teacher_at_S >= 0

    def tokens_per_chunk(self) -> tuple[np.ndarray, np.ndarray]:
        """(student tokens per chunk, teacher tokens per chunk), shape (C,) each."""
        c = self.n_chunks
        return (np.bincount(self.student_chunk_S, minlength=c), np.bincount(self.teacher_chunk_T, minlength=c))


def _firsts(starts: np.ndarray) -> np.ndarray:
    """(n,) bool: the token is the first one starting at its offset."""
    first = np.ones(starts.shape[0], dtype=bool)
    first[1:] = starts[1:] != starts[:-1]
    return first


def align(student_starts_S, teacher_starts_T) -> Alignment:
    """Align two tokenizations of one text from the character offset where each token starts.

    Starts must be non-decreasing and begin at 0 (the response text starts where both responses do). Vectorised:
    O((S + T) log(S + T)).
    """
    s = np.asarray(student_starts_S, dtype=np.int64)
    t = np.asarray(teacher_starts_T, dtype=np.int64)
    for name, a in (("student", s), ("teacher", t)):
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"{name} starts must be a non-empty 1-D array")
        if a[0] != 0 or (np.diff(a) < 0).any():
            raise ValueError(f"{name} starts must begin at 0 and never decrease")
    common = np.intersect1d(s, t)  # sorted, unique; contains 0
    s_chunk = np.searchsorted(common, s, side="right") - 1
    t_chunk = np.searchsorted(common, t, side="right") - 1
    # a student position is aligned when it is the first student token at a common boundary; its teacher position is
    # the first teacher token starting there
    s_first, t_first = _firsts(s), _firsts(t)
    at_common_s = s_first & (common[s_chunk] == s)
    first_t_of_chunk = np.full(common.shape[0], -1, dtype=np.int64)
    t_idx = np.flatnonzero(t_first & (common[t_chunk] == t))
    first_t_of_chunk[t_chunk[t_idx]] = t_idx
    teacher_at = np.where(at_common_s, first_t_of_chunk[s_chunk], -1)
    return Alignment(common_C=common, student_chunk_S=s_chunk, teacher_chunk_T=t_chunk, teacher_at_S=teacher_at)


def token_starts(prefix_lengths_S, clean_S) -> np.ndarray:
    """Token starts from the text decoded from each token prefix ids[:0], ids[:1], ..., ids[:S-1]: the start of
    token i is the length of the text before it, where that text is a clean prefix of the response (``clean_S``).
    A prefix that is not (it ends inside a multi-byte character that token i completes) is no boundary: token i is
    given the previous token's start, so it joins that token's chunk and is never an aligned position."""
    lengths = np.asarray(prefix_lengths_S, dtype=np.int64)
    clean = np.asarray(clean_S, dtype=bool).copy()
    if lengths.size:
        clean[0] = True  # the empty prefix
    starts = np.where(clean, lengths, 0)
    return np.maximum.accumulate(starts) if starts.size else starts


def chunk_sums(values_N: np.ndarray, chunk_N: np.ndarray, n_chunks: int) -> np.ndarray:
    """(C,) sum of per-token values over each chunk."""
    return np.bincount(chunk_N, weights=np.asarray(values_N, dtype=np.float64), minlength=n_chunks)


def length_summary(counts_C: np.ndarray) -> dict:
    """Mean, median, 90th percentile and max of a per-chunk count (tokens or characters)."""
    c = np.asarray(counts_C, dtype=np.float64)
    if c.size == 0:
        return {"mean": None, "p50": None, "p90": None, "max": None}
    return {"mean": float(c.mean()), "p50": float(np.median(c)), "p90": float(np.quantile(c, 0.9)),
            "max": int(c.max())}
