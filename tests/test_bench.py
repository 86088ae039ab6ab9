"""The validation benchmark's task families, outcome rule, pre-registration guard and scorecard (docs/validation.md)."""

from __future__ import annotations

import json
import random
import subprocess

import numpy as np
import pytest

from opd_probe.errors import InputError
from opd_probe.lab import bench, bench_score
from opd_probe.lab.families import (ADD_SLOTS, ANSWER, FAMILIES, GEN, HARD_ITEMS, LOOKUP_SLOTS, PRICES, Add, Lookup,
                                    Style, family_pieces, family_tokens, tokenizer, wrong_price)
from opd_probe.verdict import predicted_gain


@pytest.fixture(scope="module")
def tok():
    return tokenizer()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_tokenizer_splits_rendered_text_into_exactly_the_generated_pieces(tok, family):
    F, rng = FAMILIES[family], random.Random(3)
    for i in range(40):
        p = F.problem(rng, "hard" if i % 2 else "easy")
        resp = F.response(p, Style(mix=0.5, flaw=0.7), rng)
        chat = tok.apply_chat_template([{"role": "user", "content": "".join(F.prompt(p))}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok(chat + "".join(resp), add_special_tokens=False)["input_ids"]
        assert tok.convert_ids_to_tokens(ids) == F.prompt(p) + [GEN] + resp
        assert tok.unk_token_id not in ids


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_pieces_hold_every_piece_the_family_writes(family):
    F, rng, seen = FAMILIES[family], random.Random(5), set()
    for i in range(300):
        p = F.problem(rng, "hard" if i % 2 else "easy")
        seen |= {*F.prompt(p), GEN, *F.response(p, Style(mix=0.5, flaw=0.7), rng)}
    assert seen <= family_pieces(family)


def test_the_tokenizer_is_the_one_the_shipped_models_were_built_with(tok):
    from transformers import AutoTokenizer

    from opd_probe.lab.bench import model_dir

    for family in FAMILIES:
        assert AutoTokenizer.from_pretrained(model_dir(family, "s0")).get_vocab() == tok.get_vocab()


def test_each_family_uses_at_least_256_tokens_and_more_than_16_synonyms_per_slot():
    assert family_tokens("add") >= 256 and family_tokens("lookup") >= 256
    assert all(len(ws) > 16 for slots in (ADD_SLOTS, LOOKUP_SLOTS) for f in slots.values() for ws in f.values())


def _connectors(resp, slots):
    return [w.strip() for w in resp if any(w.strip() in ws for ws in slots.values())]


def test_mix_sets_the_share_of_connector_slots_in_the_students_synonyms():
    rng = random.Random(0)
    student = {w for ws in ADD_SLOTS["a"].values() for w in ws}
    for mix, lo, hi in ((1.0, 1.0, 1.0), (0.5, 0.45, 0.55), (0.15, 0.11, 0.19)):
        words = [w for _ in range(300) for w in
                 _connectors(Add.response(Add.problem(rng, "easy"), Style(mix=mix), rng), {**ADD_SLOTS["a"],
                             **{k + "b": v for k, v in ADD_SLOTS["b"].items()}})]
        share = np.mean([w in student for w in words])
        assert lo <= share <= hi, (mix, share)


def test_add_response_is_a_correct_scratchpad_and_the_flaw_drops_the_leading_carry():
    rng = random.Random(1)
    p = (987, 543)
    clean = "".join(Add.response(p, Style(), rng))
    assert clean.endswith(ANSWER + " 1530") and Add.answer(p) == "1530"
    assert "".join(Add.response(p, Style(flaw=1.0), rng)).endswith(ANSWER + " 530")
    small = (123, 456)  # a 3-digit sum has no leading carry to drop
    assert "".join(Add.response(small, Style(flaw=1.0), rng)).endswith(ANSWER + " 579")


def test_lookup_flaw_hits_hard_items_only_and_fixed_items_are_spared():
    rng = random.Random(2)
    hard = HARD_ITEMS[0]
    easy = next(i for i in PRICES if i not in HARD_ITEMS)
    p = (hard, easy, next(i for i in PRICES if i not in HARD_ITEMS and i != easy))
    flawed = "".join(Lookup.response(p, Style(flaw=1.0), rng))
    assert flawed.endswith(ANSWER + " " + f"{wrong_price(hard)}{PRICES[p[1]]}{PRICES[p[2]]}")
    assert wrong_price(hard) != PRICES[hard]
    spared = "".join(Lookup.response(p, Style(flaw=1.0, fixed=frozenset({hard})), rng))
    assert spared.endswith(ANSWER + " " + Lookup.answer(p))


RULE = {"bar": 0.05, "retention_floor": -0.10}


def _iv(mean, low, high):
    return {"mean": mean, "low": low, "high": high}


@pytest.mark.parametrize("gain, control, retention, expected", [
    (_iv(0.20, 0.10, 0.30), _iv(0.3, 0.2, 0.4), _iv(0.0, -0.05, 0.05), "works"),
    (_iv(0.20, 0.04, 0.36), _iv(0.3, 0.2, 0.4), _iv(0.0, -0.05, 0.05), "unclear"),  # straddles the bar
    (_iv(0.02, -0.03, 0.04), _iv(0.3, 0.2, 0.4), _iv(0.0, -0.05, 0.05), "fails"),  # below the bar
    (_iv(0.20, 0.10, 0.30), _iv(-0.1, -0.2, -0.01), _iv(0.0, -0.05, 0.05), "fails"),  # worse than the control
    (_iv(0.20, 0.10, 0.30), _iv(0.3, 0.2, 0.4), _iv(-0.3, -0.4, -0.2), "fails"),  # forgetting
    (_iv(0.20, 0.10, 0.30), _iv(0.3, 0.2, 0.4), _iv(-0.12, -0.2, -0.05), "unclear"),  # retention below the floor
])
def test_outcome_label_follows_the_spec_rule(gain, control, retention, expected):
    ivs = {"teacher_vs_baseline": gain, "teacher_vs_control": control, "retention_teacher_vs_baseline": retention}
    assert bench.label(ivs, RULE) == expected


def test_the_shipped_spec_names_every_pair_once_and_splits_by_family():
    spec = bench.load_spec()
    ids = [(p["family"], bench.pair_id(p)) for p in spec["pairs"]]
    assert len(ids) == len(set(ids)) >= 40
    assert set(spec["split"]["dev"]).isdisjoint(spec["split"]["heldout"])
    assert spec["opd"]["top_k"] == 16 and spec["opd"]["seeds"] >= 3 and spec["opd"]["control"]


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def _guards():
    """(folder, predictions file, guard, rules hash) of each pre-registered measurement: the held-out family and the
    cross-tokenizer pilot (docs/cross-tokenizer.md)."""
    from opd_probe.lab import cross_bench
    from opd_probe.lab.validation import current_rules_hash

    return [("validation", "predictions-heldout.json", bench.guard_heldout, current_rules_hash),
            ("cross", "predictions.json", cross_bench.guard, cross_bench.rules_hash),
            ("cross/family", "predictions.json", cross_bench.guard, cross_bench.rules_hash)]


@pytest.mark.parametrize("folder,name,guard,current", _guards(),
                         ids=["held-out family", "cross-tokenizer pilot", "cross-tokenizer family"])
def test_outcomes_are_refused_until_the_predictions_are_committed(tmp_path, folder, name, guard, current):
    root = tmp_path / "benchmarks" / folder
    root.mkdir(parents=True)
    _git(tmp_path, "init", "-q")
    with pytest.raises(InputError, match="not committed"):
        guard(root)
    pred = root / name
    pred.write_text(json.dumps({"rules_hash": current()}))
    with pytest.raises(InputError, match="not committed"):
        guard(root)
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.email=a@b", "-c", "user.name=t", "commit", "-qm", "predictions")
    guard(root)  # committed, current rules: allowed
    pred.write_text(json.dumps({"rules_hash": "0" * 16}))
    _git(tmp_path, "-c", "user.email=a@b", "-c", "user.name=t", "commit", "-qam", "other rules")
    with pytest.raises(InputError, match="made with rules"):
        guard(root)


def test_wilson_interval_and_sign_test_by_hand():
    from opd_probe.lab.validation import sign_test, wilson_interval

    # 6/6: centre (1 + 1.96^2/12) / (1 + 1.96^2/6) = 0.8048, half 1.96/1.6403 * sqrt(1.96^2/144) = 0.1952
    lo, hi = wilson_interval(6, 6)
    assert lo == pytest.approx(0.6097, abs=1e-4) and hi == pytest.approx(1.0)
    lo, hi = wilson_interval(3, 6)  # symmetric about 0.5
    assert lo == pytest.approx(1 - hi) and lo == pytest.approx(0.1876, abs=1e-4)
    assert sign_test(3, 0) == pytest.approx(1 / 8)
    assert sign_test(2, 1) == pytest.approx(4 / 8)  # P(X >= 2 | n = 3) = (3 + 1) / 8
    assert sign_test(0, 0) == 1.0


def test_predicted_gain_is_the_depth0_gain_on_the_supported_share():
    nov = {"continuation": [{"depth": 0, "gain": 0.5}, {"depth": 8, "gain": 0.9}]}
    assert predicted_gain({"unsupported": 0.2, "overlap_mass_student": 0.3}, nov) == pytest.approx(0.4)
    assert np.isnan(predicted_gain({"unsupported": 0.2}, {}))  # no answers probed: no score


def test_ranking_measures_by_hand():
    rows = [{"pair": {"family": "f", "student": "s", "teacher": t}, "gain": {"mean": g}, "score": sc}
            for t, g, sc in (("a", 0.3, 0.9), ("b", 0.2, 0.1), ("c", 0.1, 0.5), ("d", 0.0, 0.0))]
    m = bench_score.ranking_measures(rows, lambda r: r["score"])
    # scores rank a, c, b, d; gains rank a, b, c, d: d^2 = 0, 1, 1, 0 -> rho = 1 - 6*2/(4*15) = 0.8
    assert m["spearman"]["f/s"] == pytest.approx(0.8)
    assert m["regret"]["f/s"] == 0.0
    worst = bench_score.ranking_measures(rows, lambda r: -r["score"])
    assert worst["regret"]["f/s"] == pytest.approx(0.3)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory, tok):
    """A benchmark root with untrained models (random init, from config) and the add family's prompt sets."""
    from opd_probe.lab.bench_models import write_prompts
    from opd_probe.lab.train import new_model, save

    root = tmp_path_factory.mktemp("bench") / "benchmarks" / "validation"
    for i, name in enumerate(("s0", "k00", "m60")):
        save(new_model(tok, i, hidden=16, layers=1, heads=2, intermediate=32), tok, root / "models" / "add" / name)
    (root / "models" / "add" / "manifest.json").write_text(json.dumps(
        {"models": {n: {"heldout_accuracy": {"hard": h, "easy": 1.0}} for n, h in (("s0", 0), ("k00", .9), ("m60", .8))}}))
    write_prompts(Add, root / "prompts" / "add")
    return root


def test_the_pipeline_runs_probe_outcome_predict_and_score_on_tiny_models(tiny_root, tmp_path):
    spec = bench.load_spec()
    spec = {**spec, "split": {"dev": ["add"], "heldout": []},
            "pairs": [{"family": "add", "student": "s0", "teacher": t, "cold_start": 0} for t in ("k00", "m60")],
            "opd": {**spec["opd"], "steps": 2, "eval_every": 2, "seeds": 1, "batch_prompts": 2, "samples": 2},
            "probe": {**spec["probe"], "samples": 1}}
    bench.run_probes(spec, "dev", tmp_path / "probes", root=tiny_root, log=lambda _: None)
    rec = json.loads(bench.probe_path("add", "s0", tiny_root).read_text())
    assert set(rec["pairs"]) == {"k00", "m60"} and 0 <= rec["share_topk_coverage_below_0.99"] <= 1
    for p in spec["pairs"]:
        out = bench.run_pair(p, spec, str(tmp_path / "verify"), str(tiny_root))
        assert out["label"] in ("works", "fails", "unclear")
        assert bench.outcome_path(p, tiny_root).exists()
    doc = bench_score.predict(spec, "dev", root=tiny_root)
    assert [q["pair"]["teacher"] for q in doc["pairs"]] == ["k00", "m60"]
    report = bench_score.score(spec, root=tiny_root)
    assert report["dev"]["pairs"] == 2 and len(report["rows"]["dev"]) == 2


@pytest.mark.slow
def test_the_shipped_held_out_models_reproduce_the_frozen_predictions(tmp_path):
    """Re-probe the shipped held-out family with the frozen settings: every verdict and score as committed."""
    from opd_probe.lab.bench_models import BENCH_DIR
    from opd_probe.lab.validation import current_rules_hash

    frozen = json.loads((BENCH_DIR / "predictions-heldout.json").read_text())
    assert frozen["rules_hash"] == current_rules_hash(), "the rules changed after the held-out predictions"
    spec = bench.load_spec()
    bench.run_probes(spec, "heldout", tmp_path / "runs", records=tmp_path, log=lambda _: None)
    again = {bench.pair_id(q["pair"]): q for q in
             bench_score.predict(spec, "heldout", records=tmp_path, write=False)["pairs"]}
    for q in frozen["pairs"]:
        now = again[bench.pair_id(q["pair"])]
        assert (now["verdict"], now["reasons"]) == (q["verdict"], q["reasons"]), q["pair"]
        assert now["score"] == pytest.approx(q["score"], abs=1e-3, nan_ok=True), q["pair"]


def _shipped(name: str) -> dict:
    from opd_probe.lab.bench_models import BENCH_DIR

    return json.loads((BENCH_DIR / name).read_text())


def test_the_shipped_report_scores_the_frozen_held_out_predictions():
    report, frozen = _shipped("report.json"), _shipped("predictions-heldout.json")
    by_id = {f"{q['pair']['family']}/{bench.pair_id(q['pair'])}": q for q in frozen["pairs"]}
    rows = report["rows"]["heldout"]
    assert {r["id"] for r in rows} == set(by_id)  # every pre-registered pair was measured and scored
    for r in rows:
        q = by_id[r["id"]]
        assert r["verdict"] == q["verdict"] and r["score"] == pytest.approx(q["score"], nan_ok=True)


def test_the_verdict_beats_the_constant_predictors_on_the_shipped_held_out_family():
    """Fails if "always warn" or "always go" matched the verdict on the held-out pairs (docs/validation.md)."""
    p = _shipped("report.json")["heldout"]["predictors"]
    assert p["verdict"]["balanced_accuracy"] > max(p["always warn"]["balanced_accuracy"],
                                                   p["always go"]["balanced_accuracy"])
    assert p["verdict"]["auroc"] > 0.5


def test_docs_validation_carries_the_regenerated_tables():
    from pathlib import Path

    from opd_probe.lab.bench_models import BENCH_DIR

    docs = Path(__file__).resolve().parents[1] / "docs" / "validation.md"
    assert (BENCH_DIR / "report.md").read_text() in docs.read_text()
