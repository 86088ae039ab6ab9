"""The zoo's task, tokenizer and role checks (the zoo itself is built by python -m opd_probe.zoo.build)."""

import random

import pytest

from opd_probe.answers import is_correct
from opd_probe.errors import ModelLoadError
from opd_probe.zoo import resolve
from opd_probe.zoo.build import role_checks
from opd_probe.zoo.task import FORMATS, problem, prompt_text, scratchpad
from opd_probe.zoo.train import encode, make_tokenizer


def test_scratchpads_are_correct_and_checkable():
    rng = random.Random(0)
    for kind in ("easy", "mid", "hard"):
        for _ in range(50):
            a, b = problem(rng, kind)
            for fmt in FORMATS:
                text = scratchpad(a, b, fmt, rng)
                assert is_correct(text, str(a + b)), text
                assert text.count("Answer: ") == 1
                assert text.count("|" if fmt == "strong" else "=") == 5  # one step per digit


def test_formats_share_digits_but_not_punctuation():
    a, b = 12345, 98765
    texts = {fmt: scratchpad(a, b, fmt, random.Random(3)) for fmt in FORMATS}
    digits = {fmt: "".join(c for c in t.split("Answer")[0] if c.isdigit()) for fmt, t in texts.items()}
    assert len(set(digits.values())) == 1  # same computation, same digit order
    assert ";" in texts["aligned"] and ";" not in texts["mild"] and "->" in texts["strong"]


def test_fast_encode_equals_template_and_tokenizer():
    tok = make_tokenizer()
    for a, b in [(0, 0), (123, 4567), (99999, 99999)]:
        for fmt in FORMATS:
            p, r = encode(tok, a, b, fmt, random.Random(1))
            rendered = tok.apply_chat_template([{"role": "user", "content": prompt_text(a, b)}], tokenize=False,
                                               add_generation_prompt=True)
            assert p == tok(rendered, add_special_tokens=False)["input_ids"]
            want = tok(scratchpad(a, b, fmt, random.Random(1)), add_special_tokens=False)["input_ids"]
            assert r == want + [tok.eos_token_id]
            assert tok.decode(r, skip_special_tokens=True) == scratchpad(a, b, fmt, random.Random(1))


def test_role_checks():
    good = {"student": {"hard": 0.2, "easy": 0.99}, "aligned": {"hard": 0.9, "easy": 1.0},
            "mild": {"hard": 0.9, "easy": 1.0}, "strong": {"hard": 0.85, "easy": 0.98},
            "same-recipe": {"hard": 0.25, "easy": 0.99}, "successor": {"hard": 0.9, "easy": 1.0}}
    assert role_checks(good) == []
    bad = {**good, "same-recipe": {"hard": 0.9, "easy": 1.0}, "student": {"hard": 0.7, "easy": 0.99}}
    fails = role_checks(bad)
    assert any("student" in f for f in fails) and any("same-recipe" in f for f in fails)


def test_unknown_zoo_name_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="no zoo model"):
        resolve("zoo:no-such-model")
    assert resolve("./somewhere") == "./somewhere"


def test_ground_truth_table_renders():
    from opd_probe.zoo.ground_truth import zoo_markdown

    run = {"hard_before": 0.0, "hard_opd_start": 0.0, "hard_after": 0.3, "gap_recovery": 0.4, "easy_after": 1.0,
           "outcome": "gain"}
    doc = {"pairs": [{"student": "student", "teacher": "aligned", "cold_start": 0, "expected": "gain",
                      "probe": {"verdict": "go", "reasons": [], "metrics": {"overlap_ratio": 0.5,
                                "overlap_mass_student": 0.96, "topk_reverse_kl": 0.6},
                                "continuation": [{"depth": 0, "gain": 0.16}]},
                      "runs": [run, {**run, "hard_after": 0.2}], "hard_delta_mean": 0.25, "easy_after_mean": 1.0,
                      "works": True}]}
    table = zoo_markdown(doc)
    assert "student ← aligned" in table and "0.00 → 0.30, 0.20" in table and "**works**" in table
