"""The reports of a verify run (console, --md, --html): the verdict first, the arms, the paired intervals, the
power estimate, the prediction, the cold start's format share and the notes, with every number as verify.json
holds it, formatted by view.fmt (docs/verify.md, docs/reports.md).

One real verify run on tiny models (--control --seeds 2 --retain-prompts --cold-start, 2 steps: a few seconds);
tiny random models score 0 everywhere, so the numbers are also checked on verify.json documents whose experiment
is computed by verify's own `summarise` from hand-made per-problem scores; and an old (schema 1) verify.json still
renders as it was recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clirun import cli
from opd_probe import experiment as ex
from opd_probe.report.verifyview import verify_view
from opd_probe.report.view import fmt, interval
from opd_probe.run.verify import VerifyConfig, VerifyResult, summarise, trends
from test_report import Page

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPTS = "sample_prompts/tiny.jsonl"
COMPARISONS = {"teacher_vs_control": "teacher − control", "teacher_vs_baseline": "teacher − baseline",
               "control_vs_baseline": "control − baseline",
               "retention_teacher_vs_baseline": "retention change: teacher − baseline"}


def reports(run_dir: Path, tmp: Path) -> dict[str, str]:
    """The console (report RUN), the Markdown and the HTML text of one run directory."""
    console = cli("report", run_dir)
    assert console.code == 0, console.err
    md, html = tmp / "r.md", tmp / "r.html"
    assert cli("report", run_dir, "--md", md).code == 0
    assert cli("report", run_dir, "--html", html).code == 0
    page = Page(html.read_text(encoding="utf-8"))
    return {"console": console.out, "md": md.read_text(encoding="utf-8"),
            "html": " ".join(" ".join(page.text).split()), "ids": page.ids, "imgs": page.imgs,
            "raw": html.read_text(encoding="utf-8")}


def expected_numbers(doc: dict) -> list[str]:
    """What every format must show, formatted from verify.json by fmt / interval."""
    exp = doc["experiment"]
    out = []
    for key, label in COMPARISONS.items():
        iv = exp["intervals"][key]
        if iv is not None:
            out += [label, interval(iv["mean"], iv["low"], iv["high"], sign=True),
                    ", ".join(fmt(d, sign=True) for d in iv["per_seed"])]
    for arm in ("teacher", "control"):
        last = exp["curves"][arm]["target"][-1]
        out += [interval(last["mean"], last["low"], last["high"]), ", ".join(fmt(x) for x in last["per_seed"])]
    out.append(fmt(exp["accuracy"]["baseline"]))
    return out


# ------------------------------------------------------------------------------------------------ a real run
@pytest.fixture(scope="module")
def real(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("vreport")
    out = root / "v"
    run = cli("verify", tiny_model(seed=0), tiny_model(seed=1), "--prompts", PROMPTS, "--limit", "4",
              "--eval-prompts", PROMPTS, "--eval-limit", "3", "--retain-prompts", PROMPTS, "--retain-limit", "2",
              "--control", "--seeds", "2", "--steps", "2", "--eval-every", "2", "--batch-prompts", "2",
              "--samples", "1", "--max-new-tokens", "4", "--cold-start", "2", "--top-k", "512", "--lr", "1e-3",
              "--dtype", "float32", "--device", "cpu", "--control-cache", root / "cache", "--out", out, "--quiet")
    assert run.code == 0, run.err
    return out, run.out, json.loads((out / "verify.json").read_text())


def test_verify_prints_the_verdict_first_then_arms_intervals_power_and_cold_start(real):
    _, stdout, doc = real
    d = doc["experiment"]["decision"]
    assert d["verdict"] == ex.INCONCLUSIVE
    assert stdout.splitlines()[0].startswith(f"verdict: {ex.INCONCLUSIVE} (--gate exits 1")
    for needle in [*d["reasons"], d["power"]["note"], "untouched student (baseline)", "teacher arm (OPD)",
                   "control arm (no teacher)", "teacher model (reference)", *expected_numbers(doc)]:
        assert needle in stdout, needle
    assert f"probe predicted {doc['prediction']['status'].upper()}" in stdout
    assert f"observed: {ex.INCONCLUSIVE}" in stdout
    recs = [r["cold_start"] for arm in ("teacher", "control") for r in doc["arms"][arm]]
    assert all(recs)  # the control starts from the same cold start as the teacher arm

    def span(key):
        lo, hi = (fmt(f([cs[key]["share"] for cs in recs]), 2) for f in (min, max))
        return lo if lo == hi else f"{lo}–{hi}"

    reached = sum(cs["reached"] for cs in recs)
    assert (f"cold start {'reached' if reached == len(recs) else 'did not reach'} its target: format share "
            f"{span('before')} → {span('after')} (target {fmt(recs[0]['target'], 2)}; reached in {reached} of 4") in stdout
    cs = doc["arms"]["teacher"][1]["cold_start"]  # and each arm-seed's row
    assert f"{fmt(cs['before']['share'], 2)} → {fmt(cs['after']['share'], 2)}" in stdout and "teacher seed 1" in stdout
    assert "the top-k control's gradient" in doc["notes"][0] and "note: --top-k 512 covers" in stdout


def test_report_md_and_html_show_the_same_experiment(real, tmp_path):
    out, stdout, doc = real
    r = reports(out, tmp_path)
    assert r["console"] == stdout  # `report RUN` prints what verify printed
    needles = [f"Verdict: {ex.INCONCLUSIVE}", *doc["experiment"]["decision"]["reasons"],
               doc["experiment"]["decision"]["power"]["note"], "control arm (no teacher)", *expected_numbers(doc),
               "format share", "covers the 512-token vocabulary"]
    for fmt_name in ("md", "html"):
        text = r[fmt_name].replace("&lt;", "<")
        for n in needles:
            assert n in text, (fmt_name, n)
    assert {"run0-outcome", "run0-power", "run0-arms", "run0-comparisons", "run0-cold-start", "run0-fig-arms",
            "run0-fig-steps", "run0-prediction"} <= r["ids"]
    assert 'class="gate undecided"' in r["raw"] and len(r["imgs"]) == 2


# ------------------------------------------------------------------------------------------------ computed docs
def record(arm: str, seed: int, target, retain, steps: int) -> dict:
    """An arm-seed record (run/arms.py) with hand-made per-problem scores at a mid-run and the final evaluation."""
    def scores(x):
        return {"pass1": [float(v) for v in x], "avg": None}

    mid = np.minimum(target, np.roll(target, 1))  # a lower accuracy half-way
    rows = [{"phase": "opd", "step": i + 1, "loss": 0.1, "grad_norm": 1.0, "overlap_ratio": 0.5,
             "topk_reverse_kl": 0.3, "entropy_gap": 0.1} for i in range(steps)]
    return {"arm": arm, "seed": seed, "steps": rows if arm == "teacher" else [{k: r[k] for k in ("phase", "step",
                                                                                            "loss", "grad_norm")}
                                                                            for r in rows],
            "evals": [{"phase": "opd", "step": steps // 2, "target": scores(mid), "retain": scores(retain)},
                      {"phase": "opd", "step": steps, "target": scores(target), "retain": scores(retain)}],
            "cold_start": None, "step0": None, "seconds": 1.0}


def computed_doc(teacher_rate: float, control_rate: float, problems: int = 30, seed: int = 0) -> dict:
    """A verify.json whose experiment is verify.summarise on random 0/1 scores at the given rates (2 seeds)."""
    rng = np.random.default_rng(seed)
    cfg = VerifyConfig(student="s", teacher="t", out="x", prompts=PROMPTS, eval_prompts=PROMPTS,
                       retain_prompts=PROMPTS, steps=40, seeds=2, control=True)
    draw = lambda p: (rng.random(problems) < p).astype(float)  # noqa: E731
    base_t, base_r = draw(0.4), draw(0.8)
    baseline = {"phase": "before", "step": 0, "target": {"pass1": list(base_t), "avg": None},
                "retain": {"pass1": list(base_r), "avg": None}}
    teacher = [record("teacher", s, draw(teacher_rate), draw(0.8), cfg.steps) for s in (0, 1)]
    control = [record("control", s, draw(control_rate), draw(0.8), cfg.steps) for s in (0, 1)]
    exp = summarise(cfg, baseline, teacher, control, {"accuracy": 0.9, "n": problems, "se": 0.05})
    res = VerifyResult(config=cfg.to_dict(), student={}, teacher={}, environment={}, steps=teacher[0]["steps"],
                       evals=[], teacher_accuracy={"accuracy": 0.9, "n": problems, "se": 0.05},
                       step0={"overlap_ratio": 0.5, "overlap_mass_student": 0.9, "entropy_gap": 0.1,
                              "topk_reverse_kl": 0.3, "grad_norm": 2.5, "top_k": 16},
                       criteria=trends(teacher[0]["steps"]) | {"passed": exp["decision"]["passed"]},
                       outcome=exp["decision"]["verdict"], gap_recovery=exp["gap_recovery"].get("teacher"),
                       prediction={"teacher": "t", "status": "go", "reasons": [], "recommendations": []},
                       experiment=exp, arms={"baseline": baseline, "teacher": teacher, "control": control},
                       notes=["a note verify recorded"])
    return res.to_dict()


def write_run(tmp: Path, doc: dict) -> Path:
    d = tmp / "run"
    d.mkdir()
    (d / "verify.json").write_text(json.dumps(doc), encoding="utf-8")
    return d


def test_an_inconclusive_run_shows_its_numbers_and_how_much_more_evidence_would_decide(tmp_path):
    doc = computed_doc(0.6, 0.5)
    d = doc["experiment"]["decision"]
    assert d["verdict"] == ex.INCONCLUSIVE and "straddles" in d["reasons"][0]  # these rates and this seed
    p = d["power"]
    assert p["problems_needed"] and f"about {p['problems_needed']} eval problems (now 30)" in p["note"]
    r = reports(write_run(tmp_path, doc), tmp_path)
    gap = doc["experiment"]["gap_recovery"]
    needles = [*expected_numbers(doc), p["note"], d["reasons"][0], fmt(gap["teacher"], 2), fmt(gap["control"], 2),
               fmt(0.9), "a note verify recorded", "retention change: control − baseline"]
    for name in ("console", "md", "html"):
        for n in needles:
            assert n in r[name], (name, n)
    assert r["console"].splitlines()[0].startswith("verdict: inconclusive")
    assert "cold start" not in r["console"]  # none ran
    assert len(r["imgs"]) == 2  # the arm curves (target and retention panels) and the per-step metrics


def test_a_passing_run_says_it_passes_the_gate(tmp_path):
    doc = computed_doc(0.95, 0.1, problems=40)
    assert doc["experiment"]["decision"]["verdict"] == ex.ADDS_SIGNAL
    r = reports(write_run(tmp_path, doc), tmp_path)
    assert r["console"].splitlines()[0].startswith(f"verdict: {ex.ADDS_SIGNAL} (passes --gate)")
    assert "power:" not in r["console"] and 'class="gate pass"' in r["raw"]
    assert f"Verdict: {ex.ADDS_SIGNAL}** (passes --gate)" in r["md"]


def test_one_seed_says_seed_variance_was_not_measured():
    doc = computed_doc(0.55, 0.45)
    for arm in ("teacher", "control"):
        doc["arms"][arm] = doc["arms"][arm][:1]
    cfg = VerifyConfig.from_dict({**doc["config"], "seeds": 1})
    doc["experiment"] = summarise(cfg, doc["arms"]["baseline"], doc["arms"]["teacher"], doc["arms"]["control"],
                                  doc["teacher_accuracy"])
    v = verify_view(doc)
    assert v.seed_note and "seed variance was not measured" in v.seed_note
    teacher_row = next(r for r in v.arm_rows if r[0].startswith("teacher arm"))
    assert "[" not in teacher_row[2]  # one seed: no interval over seeds, the mean alone


# ------------------------------------------------------------------------------------------------ old runs
OLD = {  # a verify.json as opd-probe wrote it before the controlled experiment (schema 1)
    "config": {"student": "s", "teacher": "t", "steps": 30, "loss": "topk", "top_k": 16, "lr": 1e-5,
               "batch_prompts": 4, "samples": 4},
    "student": {}, "teacher": {}, "environment": {},
    "steps": [{"phase": "opd", "step": i, "overlap_ratio": 0.4 + 0.01 * i, "topk_reverse_kl": 1.0 - 0.01 * i,
               "entropy_gap": 0.2, "grad_norm": 1.0} for i in range(1, 31)],
    "evals": [{"phase": "before", "step": 0, "accuracy": 0.40, "n": 50, "se": 0.07},
              {"phase": "opd", "step": 30, "accuracy": 0.62, "n": 50, "se": 0.07}],
    "teacher_accuracy": {"accuracy": 0.9, "n": 50, "se": 0.04},
    "step0": {"overlap_ratio": 0.41, "overlap_mass_student": 0.93, "entropy_gap": 0.2, "topk_reverse_kl": 0.99,
              "grad_norm": 3.1},
    "criteria": {"window_steps": 6, "overlap_first": 0.435, "overlap_last": 0.685, "kl_first": 0.965,
                 "kl_last": 0.715, "overlap_rises": True, "kl_falls": True, "accuracy_start": 0.4,
                 "accuracy_end": 0.62, "accuracy_delta": 0.22, "accuracy_noise": 0.139, "accuracy": "improves",
                 "passed": True},
    "outcome": "gain", "gap_recovery": 0.44, "timings": {}, "prediction": {"status": "go", "reasons": []},
    "tool_version": "0.1.0", "created_at": "2026-01-01T00:00:00+00:00", "kind": "verify", "schema_version": 1,
}


def test_an_old_verify_json_renders_as_recorded_with_a_note(tmp_path):
    r = reports(write_run(tmp_path, OLD), tmp_path)
    for name in ("console", "md", "html"):
        text = r[name]
        for n in ("gain", "success criteria PASSED", "predates verify's controlled experiment", "re-run",
                  "overlap ratio rises", fmt(0.435), fmt(0.685), "held-out accuracy (noise ±0.139)", fmt(0.62)):
            assert n.lower() in text.lower(), (name, n)
        assert "teacher − control" not in text
    assert {"run0-criteria", "run0-fig-steps", "run0-fig-acc"} <= r["ids"]


def test_without_eval_prompts_the_verdict_says_why_and_no_arm_table_is_shown():
    cfg = VerifyConfig(student="s", teacher="t", out="x", prompts=PROMPTS, steps=40)
    baseline = {"phase": "before", "step": 0, "target": None, "retain": None}
    rec = record("teacher", 0, np.ones(3), np.ones(3), cfg.steps) | {"evals": []}
    doc = computed_doc(0.6, 0.5) | {"experiment": summarise(cfg, baseline, [rec], [], None), "config": cfg.to_dict()}
    v = verify_view(doc)
    assert v.verdict == ex.INCONCLUSIVE and "no eval prompts with answers" in v.reasons[0]
    assert v.arm_rows == () and v.comparison_rows == () and v.power is None
