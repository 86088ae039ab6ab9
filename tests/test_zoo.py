"""The zoo's task, tokenizer and role checks (the zoo itself is built by python -m opd_probe.lab.build)."""

import random

import pytest

from opd_probe.answers import is_correct
from opd_probe.errors import ModelLoadError
from opd_probe.zoo import resolve
from opd_probe.lab.build import role_checks
from opd_probe.lab.task import FORMATS, problem, prompt_text, scratchpad
from opd_probe.lab.train import encode, make_tokenizer


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


def test_student_flaw_drops_only_a_six_digit_sums_carry_and_leaves_clean_data_unchanged():
    assert scratchpad(99999, 60642, "aligned", random.Random(0), drop_carry=1.0).endswith("Answer: 60641")
    assert scratchpad(12345, 1, "aligned", random.Random(0), drop_carry=1.0).endswith("Answer: 12346")
    # the option draws from the rng only when positive: teachers trained without it see the same data as before
    r1, r2 = random.Random(5), random.Random(5)
    assert [scratchpad(a, a, "mild", r1) for a in range(50000, 50100)] == \
        [scratchpad(a, a, "mild", r2, drop_carry=0.0) for a in range(50000, 50100)]
    flawed = {b: scratchpad(99999, b, "aligned", random.Random(b), drop_carry=0.7) for b in range(1000, 3000)}
    share = sum(t.endswith(f"Answer: {str(99999 + b)[1:]}") for b, t in flawed.items()) / 2000
    assert 0.65 < share < 0.75


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
    from opd_probe.lab.ground_truth import zoo_markdown

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


def test_calibration_agrees_means_go_exactly_where_opd_works():
    from opd_probe.zoo import calibration_agrees

    assert calibration_agrees("go", True) and calibration_agrees("no-go", False)
    assert calibration_agrees("caution", False)  # a warning on a failing pair is right
    assert not calibration_agrees("caution", True)  # a false alarm
    assert not calibration_agrees("go", False)  # a miss


def test_demo_without_the_zoo_exits_2_naming_the_fix(monkeypatch, tmp_path):
    from clirun import cli

    import opd_probe.zoo as zoo

    monkeypatch.setattr(zoo, "ZOO_MODELS", tmp_path / "nowhere")
    r = cli("demo", "--out", tmp_path / "run", "--quiet")
    assert r.code == 2
    assert "zoo is incomplete" in r.err and "python -m opd_probe.lab.build" in r.err
    assert not (tmp_path / "run").exists()


# docs/zoo.md, "Calibration": both OPD seeds gained (+0.10, +0.095) but the mean is a hair under the 0.10 bar set
# before the runs; the probe reads it like the working same-recipe <- aligned pair (GO), so the verdict misses it
KNOWN_MISSES = {"same-recipe ← aligned"}  # docs/zoo.md, "Calibration"


@pytest.mark.slow
def test_shipped_zoo_verdicts_match_the_recorded_ground_truth(tmp_path):
    """Calibration: the demo's probes on the shipped zoo give, for every pair, the verdict recorded in
    zoo/ground_truth.json, and that verdict is right about the OPD outcome measured there (docs/zoo.md) for every
    pair but the documented miss."""
    from clirun import cli

    from opd_probe.lab.demo import ground_truth

    truth = ground_truth()
    assert truth is not None, "zoo/ground_truth.json is missing: run python -m opd_probe.lab.ground_truth"
    r = cli("demo", "--out", tmp_path / "demo", "--quiet", "--json")
    assert r.code == 0, r.err
    import json

    rows = {row["pair"]: row for row in json.loads(r.out)["predictions"]}
    recorded = {f"{p['student']} ← {p['teacher']}": p for p in truth["pairs"] if not p["cold_start"]}
    assert set(rows) == set(recorded)
    for name, p in recorded.items():
        assert rows[name]["verdict"] == p["probe"]["verdict"], f"{name}: verdict moved from the recorded one"
        if name in KNOWN_MISSES:
            assert not rows[name]["agrees"], f"{name} is now right: update KNOWN_MISSES and docs/zoo.md"
        else:
            assert rows[name]["agrees"], f"{name}: verdict {rows[name]['verdict']} but OPD works={p['works']}"
    assert (tmp_path / "demo" / "report.html").stat().st_size > 10_000


def test_shipped_prompt_sets_are_what_the_builder_writes(tmp_path):
    from opd_probe.zoo import ZOO_PROMPTS
    from opd_probe.lab.build import write_prompts

    write_prompts(tmp_path)
    for name in ("train", "probe", "heldout-hard", "heldout-easy"):
        assert (tmp_path / f"{name}.jsonl").read_text() == (ZOO_PROMPTS / f"{name}.jsonl").read_text(), name
    import json

    prompts = {name: {json.loads(line)["prompt"] for line in (ZOO_PROMPTS / f"{name}.jsonl").read_text().splitlines()}
               for name in ("train", "probe", "heldout-hard", "heldout-easy")}
    assert len(prompts["probe"]) == 64
    assert not prompts["probe"] & (prompts["train"] | prompts["heldout-hard"] | prompts["heldout-easy"])


def test_demo_scorecard_puts_the_trivial_predictors_beside_the_verdict():
    from opd_probe.lab.demo import scorecard

    def row(verdict, works):
        return {"verdict": verdict, "measured": None if works is None else {"works": works}}

    card = scorecard([row("go", True), row("caution", False), row("go", False), row("no-go", False),
                      row("go", None)])  # the unmeasured pair does not count
    assert card["pairs"] == 4 and card["working"] == 1
    p = card["predictors"]
    assert p["verdict"]["right"] == 3 and p["always warn"]["right"] == 3 and p["always go"]["right"] == 1
    # verdict: TPR 1, TNR 2/3 -> 5/6; both constants 0.5
    assert p["verdict"]["balanced_accuracy"] == pytest.approx(5 / 6)
    assert p["always warn"]["balanced_accuracy"] == p["always go"]["balanced_accuracy"] == 0.5
