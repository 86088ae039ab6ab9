"""compare, check and verify with a teacher that has another tokenizer: text alignment end to end (run/cross.py,
docs/cross-tokenizer.md). Pure alignment math is in test_align.py; the real pair in test_real_model.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clirun import cli
from opd_probe.zoo import ZOO_PROMPTS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
TINY_PROMPTS = REPO / "sample_prompts" / "tiny.jsonl"
ZOO_RUN = ["--prompts", str(ZOO_PROMPTS / "probe.jsonl"), "--limit", "12", "--samples", "2", "--max-new-tokens", "100",
           "--quiet"]


@pytest.fixture(scope="module")
def student(tiny_model) -> Path:
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def other_tok_teacher(tiny_model, tmp_path_factory) -> Path:
    """A tiny model whose byte-level BPE tokenizer was trained on another corpus: same size, other token -> id map."""
    import tiny_models

    tok = tiny_models.build_tokenizer(tmp_path_factory.mktemp("tok-other") / "other", variant="other")
    return tiny_model(seed=2, tokenizer_dir=tok)


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _pair(results: dict, name: str) -> dict:
    return next(p for p in results["pairs"] if p["teacher"] == name)


# ------------------------------------------------------------------------------------------------ token starts
def test_token_starts_follow_the_decoded_text_even_through_split_characters(tok_dir):
    from transformers import AutoTokenizer

    from opd_probe.run.cross import starts_and_text

    tok = AutoTokenizer.from_pretrained(tok_dir)
    text = "Mei pays 9 € — héllo 🙂 done"
    ids = tok.encode(text, add_special_tokens=False)
    starts, decoded = starts_and_text(tok, ids)
    assert decoded == text and starts[0] == 0 and (np.diff(starts) >= 0).all()
    ends = list(starts[1:]) + [len(text)]
    pieces = [text[a:b] for a, b in zip(starts, ends)]
    assert "".join(pieces) == text
    # a token that ends inside a multi-byte character is no boundary: the next one takes its start
    split = [i for i in range(1, len(ids)) if not text.startswith(tok.decode(ids[:i]))]
    assert split, "the text should make the byte-level tokenizer split a character"
    for i in split:
        assert starts[i] == starts[i - 1]


def test_token_strings_keep_leading_spaces_and_drop_partial_bytes(tok_dir):
    from transformers import AutoTokenizer

    from opd_probe.run.cross import token_strings

    tok = AutoTokenizer.from_pretrained(tok_dir)
    texts = token_strings(tok, len(tok))
    word = tok.encode(" the mugs", add_special_tokens=False)
    assert "".join(texts[i] for i in word) == " the mugs" and texts[word[0]].startswith(" ")
    byte_piece = tok.encode("🙂", add_special_tokens=False)[0]  # the first of its UTF-8 bytes alone
    assert texts[byte_piece] is None


# ------------------------------------------------------------------------------------------------ compare
def test_text_alignment_of_a_same_tokenizer_teacher_reproduces_its_id_metrics(tmp_path):
    """The zoo's character tokenizer makes every sampled sequence the canonical one: through text alignment each
    chunk is one token and every position is aligned, so the metrics must be the id-based ones."""
    ids_run, text_run = tmp_path / "ids", tmp_path / "text"
    assert cli("compare", "zoo:student", "zoo:aligned", "zoo:strong", *ZOO_RUN, "--out", ids_run).code == 0
    run = cli("compare", "zoo:student", "zoo:aligned", "zoo:strong", *ZOO_RUN, "--out", text_run,
              "--reuse", ids_run, "--alignment", "text")
    assert run.code == 0, run.err
    a, b = _results(ids_run), _results(text_run)
    for name in ("zoo:aligned", "zoo:strong"):
        pa, pb = _pair(a, name), _pair(b, name)
        assert not pa["alignment"] and pb["alignment"]["mode"] == "text"
        assert pb["alignment"]["aligned_share"] == 1.0 and pb["alignment"]["multi_token_chunks"] == 0.0
        for m in ("overlap_ratio", "overlap_mass_student", "overlap_mass_teacher", "top1_agreement", "entropy_gap",
                  "sampled_reverse_kl", "student_entropy", "teacher_entropy"):
            assert pb["pooled"][m]["mean"] == pytest.approx(pa["pooled"][m]["mean"], rel=1e-6), (name, m)
        assert pb["pooled"]["topk_reverse_kl"]["mean"] is None  # needs log-probs of the student's ids
    assert _pair(b, "zoo:aligned")["verdict"]["status"] == "go"
    assert _pair(b, "zoo:strong")["verdict"]["status"] == "no-go"
    assert _pair(b, "zoo:strong")["verdict"]["reasons"][0]["metric"] == "chunk_unsupported"


def test_a_teacher_with_another_tokenizer_gets_aligned_metrics_a_verdict_and_reports(student, other_tok_teacher,
                                                                                     tiny_model, tmp_path):
    same = tiny_model(seed=1)
    out = tmp_path / "o"
    run = cli("compare", student, other_tok_teacher, same, "--prompts", TINY_PROMPTS, "--samples", "2",
              "--max-new-tokens", "24", "--out", out, "--quiet")
    assert run.code == 0, run.err
    res = _results(out)
    cross, plain = _pair(res, str(other_tok_teacher)), _pair(res, str(same))
    assert not plain["alignment"] and plain["pooled"]["topk_reverse_kl"]["mean"] is not None
    al = cross["alignment"]
    assert al["mode"] == "text" and 0 < al["aligned_share"] <= 1 and al["chunks"] > 0
    assert al["student_tokens"] == res["rollouts"]["states"]
    assert al["metrics"]["sampled_reverse_kl"].startswith("exact")
    assert al["metrics"]["overlap_ratio"].startswith("approximate")
    assert cross["pooled"]["aligned"]["mean"] == pytest.approx(al["aligned_share"])
    assert np.isfinite(cross["pooled"]["sampled_reverse_kl"]["mean"])
    assert set(cross["approximate"]) >= {"overlap_ratio", "entropy_gap"}
    codes = [r["code"] for r in cross["verdict"]["reasons"]]
    assert "cross-tokenizer" in codes
    assert any("GOLD" in r for r in cross["verdict"]["recommendations"])
    assert any("another tokenizer" in w for w in cross["warnings"])
    import pandas as pd

    states = pd.read_parquet(out / "states.parquet")
    assert (states["teacher"] == str(other_tok_teacher)).sum() == res["rollouts"]["states"]
    html = cli("report", out, "--html", tmp_path / "r.html")
    assert html.code == 0, html.err
    assert (tmp_path / "r.html").stat().st_size > 0


def test_zoo_coarse_teacher_reads_compatible_through_its_own_split_and_another_notation_does_not(tmp_path):
    """The zoo's `aligned` and `strong` recipes under a coarser tokenizer (lab/build_cross.py: the student's map plus
    merges such as "+0="). On the student's ids (what an id-based trainer feeds it) the coarse `aligned` teacher
    reads a split it never produces and looks wrecked, and compare says so; on its own split it reads as
    compatible as the same-tokenizer `aligned`, while `strong-coarse` (another notation) does not."""
    ids_run, text_run = tmp_path / "ids", tmp_path / "text"
    teachers = ("zoo:aligned", "zoo:aligned-coarse", "zoo:strong-coarse")
    assert cli("compare", "zoo:student", *teachers, *ZOO_RUN, "--out", ids_run).code == 0
    on_ids = _pair(_results(ids_run), "zoo:aligned-coarse")
    assert not on_ids["alignment"] and on_ids["verdict"]["status"] == "no-go"
    assert any("--alignment text" in w and "splits" in w for w in on_ids["warnings"])
    run = cli("compare", "zoo:student", *teachers, *ZOO_RUN, "--out", text_run, "--reuse", ids_run,
              "--alignment", "text")
    assert run.code == 0, run.err
    res = _results(text_run)
    same, coarse, strong = (_pair(res, t) for t in teachers)
    assert same["alignment"]["aligned_share"] == 1.0
    assert coarse["alignment"]["aligned_share"] < 0.9 and coarse["alignment"]["multi_token_chunks"] > 0.1
    assert coarse["verdict"]["status"] == "go", coarse["verdict"]
    assert coarse["pooled"]["chunk_unsupported"]["mean"] < 0.05
    assert strong["verdict"]["status"] == "no-go" and strong["pooled"]["chunk_unsupported"]["mean"] > 0.3
    assert coarse["pooled"]["sampled_reverse_kl"]["mean"] < strong["pooled"]["sampled_reverse_kl"]["mean"] / 5


@pytest.mark.parametrize("fmt", ["aligned", "mild", "strong"])
def test_coarse_tokenizers_read_operands_digit_by_digit_and_merge_only_response_strings(fmt):
    """lab/build_cross.py's tokenizers (the zoo's and the benchmark family's "b"): a prompt is split into single
    characters (so every teacher reads its operands as the student does), a response round-trips and some of it is
    merged into multi-character tokens (the cross-tokenizer case)."""
    import random

    from opd_probe.lab.build_cross import PIECES, PIECES_B, make_coarse_tokenizer
    from opd_probe.lab.task import prompt_text, scratchpad

    rng = random.Random(0)
    for pieces in (PIECES, PIECES_B):
        tok = make_coarse_tokenizer(pieces)
        merged = 0
        for a, b in [(12345, 678), (99999, 1), (0, 10000), (50505, 49595)]:
            prompt = prompt_text(a, b) + ">"
            assert [tok.decode([i]) for i in tok.encode(prompt, add_special_tokens=False)] == list(prompt)
            resp = scratchpad(a, b, fmt, rng)
            ids = tok.encode(resp, add_special_tokens=False)
            assert tok.decode(ids) == resp
            merged += len(ids) < len(resp)
        assert merged == 4, (pieces, fmt)


# ------------------------------------------------------------------------------------------------ bad input
def test_a_teacher_tokenizer_that_cannot_give_the_text_back_exits_2_before_any_weight(student, tmp_path,
                                                                                      monkeypatch):
    """The zoo's character tokenizer has no letters: it cannot reproduce the tiny prompts' English, so the pair
    cannot be aligned. The preflight says so before any model loads."""
    run = cli("compare", student, "zoo:aligned", "--prompts", TINY_PROMPTS, "--out", tmp_path / "o", "--quiet")
    assert run.code == 2
    assert "does not give back the text" in run.err and "byte-level BPE" in run.err
    assert not (tmp_path / "o").exists()
    check = cli("check", student, "zoo:aligned", "--prompts", TINY_PROMPTS, "--json")
    assert check.code == 2
    assert any(json.loads(line)["code"] == "round-trip" for line in check.out.splitlines())


def test_alignment_flag_is_checked(student, tmp_path):
    run = cli("compare", student, student, "--prompts", TINY_PROMPTS, "--out", tmp_path / "o", "--alignment", "bytes",
              "--quiet")
    assert run.code == 2 and "--alignment takes auto or text" in run.err


# ------------------------------------------------------------------------------------------------ verify
def test_the_chunk_level_loss_is_the_sampled_loss_when_both_tokenize_alike():
    """Through text alignment, a same-tokenizer teacher (the zoo's character tokenizer: every sample canonical) must
    give verify's sampled-token loss exactly: the same surrogate, gradient and logged reverse KL."""
    import torch

    from opd_probe.backends.base import ModelSpec
    from opd_probe.backends.hf import HFModel
    from opd_probe.prompts import load_prompts, render_prompt_ids
    from opd_probe.run.cross import CrossTeacher, TextPair
    from opd_probe.run.opd_step import teacher_loss
    from opd_probe.zoo import resolve

    student = HFModel.load(ModelSpec(path=resolve("zoo:student"), device="cpu", dtype="float32"))
    teacher = HFModel.load(ModelSpec(path=resolve("zoo:aligned"), device="cpu", dtype="float32"))
    rows = load_prompts(str(ZOO_PROMPTS / "probe.jsonl"), limit=4)
    prompts = [render_prompt_ids(student.tokenizer, p, use_chat_template=True) for p in rows]
    from opd_probe.backends.base import SamplingSettings

    gens = student.generate(prompts, SamplingSettings(samples=1, temperature=1.0, max_new_tokens=60), seed=3)
    responses = [g[0].response_ids for g in gens]
    pair = TextPair(student.tokenizer, teacher.tokenizer, True, "zoo:aligned")
    cross = CrossTeacher(teacher, pair, {tuple(p): tuple(p) for p in prompts})
    grads = []
    for t in (teacher, cross):
        student.model.zero_grad(set_to_none=True)
        surrogate, row = teacher_loss(student, t, prompts, responses, k=8, loss="sampled")
        surrogate.backward()
        grads.append((float(surrogate.detach()), row, [p.grad.clone() for p in student.model.parameters()]))
    (s_ids, r_ids, g_ids), (s_txt, r_txt, g_txt) = grads
    assert s_txt == pytest.approx(s_ids, rel=1e-5)
    assert r_txt["sampled_reverse_kl"] == pytest.approx(r_ids["sampled_reverse_kl"], rel=1e-5)
    assert r_txt["overlap_ratio"] == pytest.approx(r_ids["overlap_ratio"], rel=1e-6) and r_txt["aligned"] == 1.0
    for a, b in zip(g_ids, g_txt):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_verify_trains_a_teacher_with_another_tokenizer_with_the_sampled_loss(student, other_tok_teacher, tmp_path):
    from opd_probe.run.verify import VerifyConfig, run_verify

    base = dict(student=str(student), teacher=str(other_tok_teacher), prompts=str(TINY_PROMPTS),
                eval_prompts=str(TINY_PROMPTS), eval_limit=3, limit=4, steps=2, eval_every=2, batch_prompts=2,
                samples=1, max_new_tokens=5, lr=1e-3, device="cpu", dtype="float32")
    res = run_verify(VerifyConfig(**base, out=str(tmp_path / "v"), loss="sampled"))
    rows = res.arms["teacher"][0]["steps"]
    assert len(rows) == 2 and all(np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"]) for r in rows)
    assert 0 < rows[0]["aligned"] <= 1 and "chunk_unsupported" in rows[0]
    assert "aligned" in res.step0 and "cross-tokenizer" in [r["code"] for r in res.prediction["reasons"]]
    assert res.teacher_accuracy is not None  # the teacher answered the eval prompts under its own rendering
    # the top-k loss and a cold start need the student's ids: exit 2 with the fix
    topk = cli("verify", student, other_tok_teacher, "--prompts", TINY_PROMPTS, "--out", tmp_path / "t", "--steps",
               "1", "--quiet")
    assert topk.code == 2 and "--loss sampled" in topk.err
    cold = cli("verify", student, other_tok_teacher, "--prompts", TINY_PROMPTS, "--out", tmp_path / "c", "--steps",
               "1", "--loss", "sampled", "--cold-start", "4", "--quiet")
    assert cold.code == 2 and "--cold-start" in cold.err and "not supported yet" in cold.err


def test_the_pilots_and_the_familys_predictions_were_made_with_the_rules_in_force():
    """benchmarks/cross/predictions.json and family/predictions.json were committed before their outcomes
    (lab/cross_bench.py): an edit of
    the verdict rules (verdict.py, thresholds.py, crossverdict.py, crossmetrics.py) makes them another set of rules,
    whose predictions need new pairs (docs/cross-tokenizer.md)."""
    from opd_probe.lab import cross_bench

    for study in (cross_bench.PILOT, cross_bench.FAMILY):
        pred = json.loads((study.root / "predictions.json").read_text())
        assert pred["rules_hash"] == cross_bench.rules_hash(), study.name
        assert set(pred["pairs"]) == {p[0] for p in study.pairs}, study.name
    assert pred["opd"]["lr"] == 3e-5 and pred["opd"]["seeds"] == 3 and pred["opd"]["control"]


@pytest.mark.slow
def test_the_shipped_family_models_reproduce_the_frozen_predictions(tmp_path):
    """Re-probe the cross-tokenizer family's shipped teachers with the frozen settings: every verdict and reason as
    committed before the outcomes (benchmarks/cross/family/predictions.json), the pattern values within 0.005."""
    from opd_probe.lab import cross_bench

    frozen = json.loads((cross_bench.FAMILY.root / "predictions.json").read_text())["pairs"]
    again = cross_bench.predict(cross_bench.FAMILY, tmp_path, write=False)["pairs"]
    for pid, q in frozen.items():
        now = again[pid]
        assert (now["status"], now["reasons"]) == (q["status"], q["reasons"]), pid
        key = "chunk_unsupported" if q["alignment"] == "text" else "unsupported"
        assert now["metrics"][key] == pytest.approx(q["metrics"][key], abs=5e-3), pid


def test_print_recipe_for_a_teacher_with_another_tokenizer_is_gold(student, other_tok_teacher):
    run = cli("verify", student, other_tok_teacher, "--prompts", TINY_PROMPTS, "--loss", "sampled", "--print-recipe",
              "trl")
    assert run.code == 0 and "GOLDConfig" in run.out and "use_uld_loss=True" in run.out
    same = cli("verify", student, student, "--prompts", TINY_PROMPTS, "--print-recipe", "trl")
    assert same.code == 0 and "GKDConfig" in same.out
    verl = cli("verify", student, other_tok_teacher, "--prompts", TINY_PROMPTS, "--print-recipe", "verl")
    assert verl.code == 2 and "--print-recipe trl" in verl.err
