"""Answer extraction and equivalence on tricky cases."""

import pytest

from opd_probe.answers import answers_match, extract_answer, is_correct


@pytest.mark.parametrize("text, want", [
    ("Step 1: 3 + 4 = 7\nAnswer: 7", "7"),
    ("so x = 5. The final answer is \\boxed{\\frac{3}{4}}.", "\\frac{3}{4}"),
    ("\\boxed{1} first guess, then \\boxed{12}", "12"),
    ("nested \\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
    ("The answer is 42.", "42"),
    ("Answer: 1,250 dollars", "1,250 dollars"),
    ("we get 10 then 12 and finally 15", "15"),
    ("no numbers here", None),
])
def test_extract(text, want):
    assert extract_answer(text) == want


@pytest.mark.parametrize("pred, gold, ok", [
    ("3/4", "3/4", True),
    ("0.75", "3/4", True),
    ("\\frac{3}{4}", "3/4", True),
    ("6/8", "3/4", True),
    ("42.0", "42", True),
    ("-3", "-3", True),
    ("3", "-3", False),
    ("1,250", "1250", True),
    ("7", "8", False),
    ("", "8", False),
])
def test_match(pred, gold, ok):
    assert answers_match(pred, gold) is ok


def test_is_correct_end_to_end():
    assert is_correct("Mei pays 27 + 42 = 69, so change is 31.\nAnswer: 31", "31")
    assert not is_correct("Answer: 30", "31")
    assert not is_correct("I don't know", "31")
    # the marker wins over a later stray number
    assert is_correct("Answer: 12\n(checked in 2 steps)", "12")
