"""Answer checking for prompts that carry reference answers.

Extraction prefers explicit markers (the last ``\\boxed{...}``, then the last ``Answer: ...``, then "the answer
is ..."), and falls back to the last number in the text. Equivalence uses HuggingFace's ``math-verify`` (the
grader the paper used), which knows fractions, decimals, LaTeX and symbolic forms; a plain numeric comparison is
the fallback when it cannot parse either side.
"""

from __future__ import annotations

import re
from fractions import Fraction

_BOXED = re.compile(r"\\boxed\s*\{")
_ANSWER = re.compile(r"(?:final\s+)?answer\s*(?:is)?\s*[:=]?\s*([^\n]+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*-?\d+)?")


def _boxed_contents(text: str) -> list[str]:
    out = []
    for m in _BOXED.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end() : i - 1])
    return out


def extract_answer(text: str) -> str | None:
    """The final answer a response states, as a string, or None when it states none."""
    boxed = _boxed_contents(text)
    if boxed:
        return boxed[-1].strip()
    answers = _ANSWER.findall(text)
    if answers:
        return answers[-1].strip().rstrip(".").strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1].strip() if numbers else None


def _as_fraction(s: str) -> Fraction | None:
    s = s.strip().strip("$").replace(",", "").replace(" ", "")
    m = _NUMBER.fullmatch(s)
    if not m:
        m = _NUMBER.search(s)
        if not m:
            return None
        s = m.group(0).replace(",", "").replace(" ", "")
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(predicted: str, gold: str) -> bool:
    """True when ``predicted`` (an extracted answer) is mathematically equal to ``gold``."""
    try:
        from math_verify import parse, verify

        gold_p, pred_p = parse(gold), parse(predicted)
        if gold_p and pred_p:
            return bool(verify(gold_p, pred_p))
    except Exception:  # noqa: BLE001 - math-verify missing, timeout (signal-based), or parse failure
        pass
    a, b = _as_fraction(predicted), _as_fraction(gold)
    return a is not None and b is not None and a == b


def is_correct(response: str, gold: str) -> bool:
    pred = extract_answer(response)
    return pred is not None and answers_match(pred, gold)
