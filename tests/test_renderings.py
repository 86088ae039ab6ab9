"""run/renderings.py through compare --template, and --plan-*: the same student states scored after the student's and the
teacher's own chat template, and the cost projection of a planned OPD run, in results.json and every report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from clirun import assert_error, cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "sample_prompts" / "tiny.jsonl"
SMALL = ["--samples", "2", "--max-new-tokens", "8", "--limit", "3", "--quiet"]
SYSTEM = "You are a careful tutor."
TUTOR_TEMPLATE = (
    "{{ '<|system|>\\n" + SYSTEM + "<|endoftext|>\\n' }}"
    "{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '<|user|>\\n' + message['content'] + '<|endoftext|>\\n' }}"
    "{% else %}{{ '<|assistant|>\\n' + message['content'] + '<|endoftext|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def with_template(src: Path, dst: Path, template: str | None) -> Path:
    """A copy of model ``src`` whose tokenizer has another chat template (None: no template at all)."""
    shutil.copytree(src, dst)
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    if template is not None:
        (dst / "chat_template.jinja").write_text(template)
    return dst



@pytest.fixture(scope="module")
def models(tiny_model, tmp_path_factory):
    student = tiny_model(seed=0)
    d = tmp_path_factory.mktemp("templates")
    # the student's own weights with another template: its only difference from the student is the prompt
    tutor = with_template(student, d / "tutor", TUTOR_TEMPLATE)
    bare = with_template(tiny_model(seed=2, init_from=student, perturb=0.05), d / "bare", None)
    return student, tutor, bare


@pytest.fixture(scope="module")
def run(models, tmp_path_factory):
    student, tutor, bare = models
    out = tmp_path_factory.mktemp("cmp") / "run"
    r = cli("compare", student, tutor, bare, "--prompts", PROMPTS, "--out", out, *SMALL, "--json",
            "--template", "student,teacher", "--plan-steps", "10", "--plan-batch", "8", "--plan-max-tokens", "64")
    assert r.code == 0, r.err
    return r, out, json.loads(r.out)


def _pair(doc, teacher) -> dict:
    return next(p for p in doc["pairs"] if p["teacher"] == str(teacher))


def test_same_states_scored_under_both_templates(run, models):
    _, out, doc = run
    _, tutor, _ = models
    t = _pair(doc, tutor)["templates"]
    assert t["compared"] == ["student", "teacher"] and t["primary"] == "student"
    # the student-template scores are the pair's own (the verdict's), and with the student's own weights they are
    # perfect: overlap 1, KL 0. Under the tutor template the same weights see another context: worse.
    own = _pair(doc, tutor)["pooled"]
    assert own["overlap_ratio"]["mean"] == pytest.approx(1.0) and own["topk_reverse_kl"]["mean"] == pytest.approx(0, abs=1e-5)
    assert t["pooled"]["student"]["overlap_ratio"]["mean"] == pytest.approx(own["overlap_ratio"]["mean"])
    assert t["pooled"]["teacher"]["overlap_mass_student"]["mean"] < 0.999
    assert t["delta"]["overlap_mass_student"]["ci_high"] < 0
    assert t["recommended"] == "student" and t["decided_by"] == "overlap_mass_student"
    assert t["prompts_differing"] == 3 and not t["identical"]
    assert (out / t["scores_dir"]).is_dir() and t["scores_dir"].endswith("-teacher-template")
    # the example shows both renderings, and the differences name the system turn
    assert SYSTEM in t["example"]["teacher"] and SYSTEM not in t["example"]["student"]
    assert any("adds a system turn" in d for d in t["differences"])
    assert any("<|system|>" in d for d in t["differences"])
    # the verdict's recommendation is the measured one
    recs = _pair(doc, tutor)["verdict"]["recommendations"]
    assert any(r.startswith("keep the student's template") for r in recs)


def test_teacher_without_a_template_is_said_not_fatal(run, models):
    _, _, doc = run
    _, _, bare = models
    t = _pair(doc, bare)["templates"]
    assert "has no chat template" in t["unavailable"] and "pooled" not in t
    assert any("has no chat template" in w for w in _pair(doc, bare)["warnings"])
    assert _pair(doc, bare)["verdict"]["status"] in ("go", "caution", "no-go")


def test_template_teacher_alone_with_a_templateless_teacher_fails_before_sampling(models, tmp_path):
    student, _, bare = models
    r = cli("compare", student, bare, "--prompts", PROMPTS, "--out", tmp_path / "x", *SMALL, "--template", "teacher")
    assert_error(r, "has no chat template", "--template student")
    assert not (tmp_path / "x" / "rollouts.jsonl").exists()


@pytest.mark.parametrize("args,needle", [
    (["--template", "tutor"], "--template takes student, teacher or student,teacher"),
    (["--plan-batch", "8"], "--plan-batch and --plan-max-tokens need --plan-steps"),
    (["--plan-steps", "0"], "--plan-steps must be at least 1"),
])
def test_bad_template_and_plan_flags_are_exit_2(models, tmp_path, args, needle):
    student, tutor, _ = models
    assert_error(cli("compare", student, tutor, "--prompts", PROMPTS, "--out", tmp_path / "x", *SMALL, *args), needle)


def test_throughput_and_plan_in_results(run, models):
    _, out, doc = run
    ro = doc["rollouts"]
    assert ro["sampling_tokens_per_second"] > 0 and ro["prompt_length_mean"] > 0
    plan = doc["plan"]
    assert plan["plan"] == {"steps": 10, "batch": 8, "max_tokens": 64} and plan["sequences"] == 80
    assert plan["response_tokens"]["high"] == 80 * 64
    assert plan["response_tokens"]["low"] == pytest.approx(80 * ro["response_length_mean"])
    assert plan["sampling"]["seconds"]["high"] == pytest.approx(80 * 64 / ro["sampling_tokens_per_second"])
    for p in doc["pairs"]:
        rate = p["timings"]["scoring_tokens_per_second"]
        assert rate > 0
        assert plan["teachers"][p["teacher"]]["seconds"]["low"] == pytest.approx(
            80 * (ro["response_length_mean"] + ro["prompt_length_mean"]) / rate)
    assert any("same hardware" in a for a in plan["assumptions"])
    from opd_probe.rundir import load_results
    from opd_probe.types import ProbeResults

    r = load_results(out)
    assert ProbeResults.from_dict(r.to_dict()).to_dict() == r.to_dict() == json.loads((out / "results.json").read_text())


def test_reports_show_templates_and_plan(run, models, tmp_path):
    _, out, _ = run
    con = cli("report", out)
    assert con.code == 0, con.err
    for needle in ("chat templates", "teacher minus student", "recommended: the student's template",
                   "cost of the planned OPD run", "assumptions:", SYSTEM):
        assert needle in con.out, needle
    md = (out / "summary.md").read_text()
    assert "### Chat templates" in md and "### Cost of the planned OPD run" in md and SYSTEM in md
    # report can project another plan from the same run, without the models
    html = tmp_path / "r.html"
    r = cli("report", out, "--html", html, "--md", tmp_path / "r.md", "--plan-steps", "1000")
    assert r.code == 0, r.err
    page = html.read_text()
    assert "Chat templates: the student's against the teacher's own" in page
    assert "1000 steps x 256 sequences" in page and "&lt;|system|&gt;" in page
    assert "1000 steps x 256 sequences" in (tmp_path / "r.md").read_text()
    js = cli("report", out, "--json", "--plan-steps", "5")
    assert json.loads(js.out)["plan"]["plan"]["steps"] == 5
