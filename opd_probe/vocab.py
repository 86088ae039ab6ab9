"""Student/teacher vocabulary agreement (the teacher scores the student's token ids, so ids must mean the same strings). Pure: works on token -> id dicts."""

from __future__ import annotations

from .errors import VocabMismatchError


SAME_TOKENIZER_FIX = ("this command scores or trains on the student's token ids, so it needs a teacher with the "
                      "student's tokenizer (the same token -> id map): pick a teacher from the student's model "
                      "family; compare and verify --loss sampled take a teacher with another tokenizer through "
                      "text alignment (docs/cross-tokenizer.md)")


CROSS_FIX = ("pick a teacher whose tokenizer reproduces any text it encodes (byte-level BPE, or SentencePiece with "
             "byte fallback), or a teacher from the student's model family")


def _by_id(vocab: dict[str, int]) -> dict[int, str]:
    return {i: t for t, i in vocab.items()}


def vocab_diff(student: dict[str, int], teacher: dict[str, int]) -> tuple[list[int], list[int]]:
    """(student ids the teacher maps to another token or to none, ids only the teacher has), both sorted."""
    s, t = _by_id(student), _by_id(teacher)
    return [i for i in sorted(s) if t.get(i) != s[i]], sorted(set(t) - set(s))


def check_vocab(student: dict[str, int], teacher: dict[str, int], teacher_name: str) -> list[str]:
    """Raise unless the teacher maps every student token to the same id. Returns warnings.

    OPD feeds the student's token ids to the teacher, so the maps must agree on every id the student can
    emit. A teacher with extra tokens past the student's vocabulary (added special tokens) is allowed, with a
    warning; output-head padding is not a vocabulary difference (the scorer ignores padding rows).
    """
    s, t = _by_id(student), _by_id(teacher)
    differ, extra = vocab_diff(student, teacher)
    if differ:
        i = differ[0]
        theirs = repr(t[i]) if i in t else "no token"
        raise VocabMismatchError(
            f"student and teacher vocabularies differ at id {i}: student {s[i]!r} vs teacher {theirs} "
            f"(teacher {teacher_name}; student has {len(s)} tokens, teacher {len(t)})",
            fix=SAME_TOKENIZER_FIX,
        )
    if extra:
        return [
            f"teacher {teacher_name} has {len(extra)} token(s) the student lacks (ids {extra[0]}..{extra[-1]}); "
            "the student can never emit them, so teacher mass on them counts as disagreement"
        ]
    return []
