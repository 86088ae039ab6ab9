"""compare's measured lint (issue 15, docs/lint.md): renderer bias, stop-token agreement, scoring determinism.

Pure math on hand-derived arrays; then teachers built to have a known answer: the student's own weights under a
template that adds a known prefix (bias != 0, checked against an independent full forward pass) or under the
student's own template (bias exactly 0, no pass); a teacher whose output-head bias for EOS is -1e4 (it never
stops) against the student itself; determinism of the transformers scorer in float32.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from clirun import cli

from opd_probe import lint
from opd_probe.lint import Determinism, Lint, RendererBias, StopAgreement

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "sample_prompts" / "tiny.jsonl"
SMALL = ["--samples", "2", "--max-new-tokens", "12", "--limit", "3", "--quiet", "--device", "cpu",
         "--dtype", "float32"]
PREFIX = "You are a careful tutor."
PREFIX_TEMPLATE = (  # the tiny models' template (tests/tiny_models.py) with a system turn written first
    "{{ '<|system|>\\n" + PREFIX + "<|endoftext|>\\n' }}"
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '<|user|>\\n' + message['content'] + '<|endoftext|>\\n' }}"
    "{% else %}{{ '<|assistant|>\\n' + message['content'] + '<|endoftext|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


# ------------------------------------------------------------------------------------------------ pure
def test_renderer_bias_is_the_paired_token_pooled_difference():
    s = np.array([-1.0, -2.0, -3.0])
    t = np.array([-1.5, -2.5, -2.0])  # differences 0.5, 0.5, -1.0
    b = lint.renderer_bias(s, t, np.array([0, 0, 1]), 2, "hand", n_boot=200)
    assert b.status == "measured" and b.mean == pytest.approx(0.0) and b.n_states == 3 and b.n_prompts == 2
    assert b.student_rendering_logprob == pytest.approx(-2.0) and b.teacher_rendering_logprob == pytest.approx(-2.0)
    # resampling prompts: a replicate is all prompt 0 (0.5), all prompt 1 (-1.0), or a mix
    assert -1.0 <= b.ci_low <= b.ci_high <= 0.5
    same = lint.renderer_bias(s, s, np.array([0, 0, 1]), 2, "hand", n_boot=50)
    assert (same.mean, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)


def test_stop_agreement_reads_probabilities_at_the_stopping_states():
    st = lint.stop_agreement(np.log([0.05, 0.5, 0.01, 0.9]), np.log([0.5, 0.5, 0.5, 0.5]), np.array([0, 1, 2, 3]), 4,
                             n_boot=100)
    assert st.n_stops == 4 and st.teacher_prob_mean == pytest.approx(0.365) and st.low_share == 0.5
    assert st.student_prob_mean == pytest.approx(0.5)
    assert lint.stop_agreement(np.zeros(0), np.zeros(0), np.zeros(0, int), 1).n_stops == 0


def test_max_abs_diff():
    assert lint.max_abs_diff([np.array([1.0, 2.0]), np.array([[0.0]])], [np.array([1.0, 2.5]), np.array([[-1.0]])]) \
        == 1.0
    assert lint.max_abs_diff([], []) == 0.0


def _lint(bias=0.0, low_share=0.0, det=0.0) -> Lint:
    return Lint(RendererBias("measured", bias, bias - 0.01, bias + 0.01, 10, 2, "hand"),
                StopAgreement(8, 0.5, 0.4, 0.6, low_share, 0.1, 0.6),
                Determinism("measured", 2, 20, det, det, ("reversed", "alone")), seconds=0.5)


def test_lint_warning_one_line_only_when_something_is_off():
    assert lint.lint_warning(_lint()) is None
    assert lint.lint_warning(_lint(bias=lint.RENDERER_BIAS_WARN)) is None  # at the line: not over it
    w = lint.lint_warning(_lint(bias=-0.287, low_share=0.75, det=0.05))
    assert w.startswith("lint: ") and "\n" not in w
    assert "renderer bias -0.287" in w and "75% of 8 stopping states" in w and "up to 0.05 nats" in w


def test_lint_round_trips_through_the_pair_record():
    from opd_probe.types import PairResult

    pair = PairResult("t", "teacher-0-t", {}, {}, (), {}, lint=_lint(bias=0.2))
    back = PairResult.from_dict(json.loads(json.dumps(pair.to_dict())))
    assert back.lint == pair.lint and back.lint.determinism.compositions == ("reversed", "alone")
    assert PairResult.from_dict({**pair.to_dict(), "lint": None}).lint is None  # results.json of older runs


# ------------------------------------------------------------------------------------------------ renderings
def with_template(src: Path, dst: Path, template: str) -> Path:
    shutil.copytree(src, dst)
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    (dst / "chat_template.jinja").write_text(template)
    return dst


@pytest.fixture(scope="module")
def template_run(tiny_model, tmp_path_factory):
    student = tiny_model(seed=0)
    tutor = with_template(student, tmp_path_factory.mktemp("lint") / "tutor", PREFIX_TEMPLATE)
    out = tmp_path_factory.mktemp("lintrun") / "run"
    r = cli("compare", student, tutor, student, "--prompts", PROMPTS, "--out", out, *SMALL, "--json")
    assert r.code in (0, 1), r.err
    return student, tutor, out, json.loads(r.out)


def _pair(doc, teacher, i=None) -> dict:
    pairs = [p for p in doc["pairs"] if p["teacher"] == str(teacher)]
    return pairs[i or 0]


def _independent_bias(tutor: Path, rollouts: list[dict]) -> float:
    """Σ (log q(y | student's prompt ids) - log q(y | the tutor template's ids)) / N by a plain full forward."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from opd_probe.prompts import load_prompts

    tok = AutoTokenizer.from_pretrained(tutor)
    model = AutoModelForCausalLM.from_pretrained(tutor, dtype=torch.float32).eval()
    prompts = {p.index: p for p in load_prompts(str(PROMPTS), limit=3)}

    def logprobs(prompt_ids, response_ids):
        ids = torch.tensor([list(prompt_ids) + list(response_ids)])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        n = len(prompt_ids)
        return np.array([lp[n - 1 + j, t].item() for j, t in enumerate(response_ids)])

    diffs = []
    for r in rollouts:
        own = tok.apply_chat_template(prompts[r["prompt_index"]].as_messages(), add_generation_prompt=True,
                                      tokenize=True, return_dict=False)
        assert own != r["prompt_token_ids"]
        diffs.append(logprobs(r["prompt_token_ids"], r["response_token_ids"])
                     - logprobs(own, r["response_token_ids"]))
    return float(np.concatenate(diffs).mean())


def test_a_known_prefix_gives_a_bias_that_a_full_forward_pass_confirms(template_run):
    _, tutor, out, doc = template_run
    b = _pair(doc, tutor)["lint"]["renderer_bias"]
    assert b["status"] == "measured" and b["source"] == "the first 3 prompts, one rollout each"
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines() if line]
    first = [next(r for r in rollouts if r["prompt_index"] == i) for i in range(3)]
    assert b["n_states"] == sum(len(r["response_token_ids"]) for r in first)
    want = _independent_bias(tutor, first)
    assert abs(want) > 1e-3  # the prefix changes the context: the same weights score the response otherwise
    assert b["mean"] == pytest.approx(want, abs=1e-4)


def test_the_same_template_gives_exactly_zero_without_a_pass(template_run):
    student, _, _, doc = template_run
    b = _pair(doc, student)["lint"]["renderer_bias"]
    assert b["status"] == "identical" and b["mean"] == 0.0


def test_determinism_of_the_transformers_scorer_in_float32(template_run):
    _, tutor, _, doc = template_run
    for teacher in (tutor,):
        d = _pair(doc, teacher)["lint"]["determinism"]
        assert d["status"] == "measured" and d["sequences"] == 3 and d["positions"] > 0
        assert d["repeat_max_abs_diff"] <= 1e-5 and d["composition_max_abs_diff"] <= 1e-5, d
    p = _pair(doc, tutor)
    assert p["timings"]["lint_seconds"] > 0 and p["lint"]["seconds"] == p["timings"]["lint_seconds"]


def test_both_renderings_scored_are_reused_for_the_bias(template_run, tmp_path):
    student, tutor, _, _ = template_run
    r = cli("compare", student, tutor, "--prompts", PROMPTS, "--out", tmp_path / "both", *SMALL, "--json",
            "--template", "student,teacher")
    assert r.code in (0, 1), r.err
    doc = json.loads(r.out)
    b = _pair(doc, tutor)["lint"]["renderer_bias"]
    assert b["source"] == "all rollouts (--template student,teacher)"
    assert b["n_states"] == doc["rollouts"]["states"]
    from opd_probe.rundir import OutDir

    parts = {slug: np.concatenate([a["sampled_logprob_L"] for _, _, a in OutDir(tmp_path / "both").read_score_parts(
        slug)]) for slug in (_pair(doc, tutor)["slug"], _pair(doc, tutor)["slug"] + "-teacher-template")}
    s, t = parts.values()
    assert b["mean"] == pytest.approx(float(np.mean(s.astype(np.float64) - t)), abs=1e-6)


# ------------------------------------------------------------------------------------------------ stop token
def _phi(tok_dir: Path, out: Path, eos_bias: float) -> Path:
    """A tiny Phi model (its output head has a bias) whose head bias for the EOS id is ``eos_bias``; the same
    weights otherwise (seed 0, the default init: nearly uniform logits, so a bias of +6 gives EOS p ~ 0.4 and one of
    -1e4 gives it p = 0)."""
    import torch
    from transformers import AutoTokenizer, PhiConfig, PhiForCausalLM

    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg = PhiConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=2, max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = PhiForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.bias.zero_()
        model.lm_head.bias[tok.eos_token_id] = eos_bias
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def stop_models(tok_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("stop")
    return _phi(tok_dir, d / "student", 6.0), _phi(tok_dir, d / "never-stops", -1e4)


def _stop_lint(student_dir: Path, teacher_dir: Path) -> Lint:
    from opd_probe.backends import load_backend_model
    from opd_probe.backends.base import ModelSpec
    from opd_probe.prompts import load_prompts
    from opd_probe.run.lint import measure_lint
    from opd_probe.types import Rollout

    spec = dict(device="cpu", dtype="float32")
    student = load_backend_model("hf", ModelSpec(str(student_dir), **spec), role="student")
    teacher = load_backend_model("hf", ModelSpec(str(teacher_dir), **spec), role="teacher")
    prompts = load_prompts(str(PROMPTS), limit=3)
    eos = student.eos_ids()[0]
    rng = np.random.default_rng(0)
    rollouts = []
    for p in prompts:  # three responses per prompt: a few ordinary tokens, then the stop token
        for j in range(3):
            body = tuple(int(x) for x in rng.integers(10, student.vocab_size, size=3 + j))
            rollouts.append(Rollout(len(rollouts), p.index, p.id, j, tuple(student.render(p, True)), body + (eos,),
                                    "", "stop"))
    rollouts.append(Rollout(len(rollouts), 0, prompts[0].id, 3, rollouts[0].prompt_token_ids, (11, 12), "",
                            "length"))  # cut at the length limit: not a stopping state
    from opd_probe.backends.base import ScoreArrays

    def scores(model):
        return ScoreArrays.concat(model.score([r.prompt_token_ids for r in rollouts],
                                              [r.response_token_ids for r in rollouts], k=4))

    s, t = scores(student), scores(teacher)
    return measure_lint(teacher, rollouts, prompts, {"student": (t, {})}, s, "student", budget=4096, n_boot=100)


def test_a_teacher_that_never_stops_disagrees_at_every_stopping_state(stop_models):
    student, never = stop_models
    st = _stop_lint(student, never).stop
    assert st.n_stops == 9 and st.low_share == 1.0 and st.teacher_prob_mean < 1e-6
    assert st.student_prob_mean > 0.1
    w = lint.lint_warning(_stop_lint(student, never))
    assert w and "100% of 9 stopping states" in w


def test_the_student_as_its_own_teacher_agrees(stop_models):
    student, _ = stop_models
    got = _stop_lint(student, student)
    st = got.stop
    assert st.n_stops == 9 and st.teacher_prob_mean == pytest.approx(st.student_prob_mean, abs=1e-6)
    assert st.low_share == 0.0 and st.teacher_prob_mean > 0.1
    assert got.renderer_bias.status == "identical" and got.renderer_bias.mean == 0.0
    assert lint.lint_warning(got) is None
    assert math.isfinite(got.determinism.composition_max_abs_diff)


# ------------------------------------------------------------------------------------------------ the verdict
def _decide(stop):
    from opd_probe.thresholds import Thresholds
    from opd_probe.verdict import decide

    pooled = {"overlap_ratio": 0.8, "overlap_mass_student": 0.98, "entropy_gap": 0.1, "topk_reverse_kl": 0.3,
              "topk_coverage_student": 0.9}
    return decide("t", pooled, Thresholds(), stop=stop)


def test_stop_disagreement_is_a_caution_only_past_its_lines():
    assert _decide(None).status == "go"
    v = _decide(StopAgreement(20, 0.02, 0.01, 0.03, 0.9, 0.1, 0.95))
    assert v.status == "caution" and [r.code for r in v.reasons] == ["stop-disagreement"]
    r = v.reasons[0]
    assert (r.metric, r.value, r.threshold, r.direction) == ("stop_low_share", 0.9, 0.5, ">")
    assert any("stop tokens" in x for x in v.recommendations)
    assert _decide(StopAgreement(20, 0.6, 0.5, 0.7, 0.5, 0.1, 0.95)).status == "go"  # at the line: not over it
    assert _decide(StopAgreement(7, 0.02, 0.01, 0.03, 1.0, 0.1, 0.95)).status == "go"  # too few stopping states
    assert _decide(StopAgreement(0)).status == "go"


def test_the_lint_line_reaches_every_summary(template_run):
    from opd_probe import load_results
    from opd_probe.report.markdown import summary_markdown

    _, tutor, out, _ = template_run
    results = load_results(out)
    md = summary_markdown(results)
    assert "### Lint" in md and md.count("renderer bias +") == 1  # the tutor only; the student's own is identical
    assert (out / "summary.md").read_text() == md
    assert any(w.startswith("lint: renderer bias") for w in results.pair(str(tutor)).warnings)
    from opd_probe.report.html import write_html

    write_html([out], out / "report.html")
    assert "lint: renderer bias +" in (out / "report.html").read_text()
