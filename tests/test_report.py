"""`opd-probe report` (console, --md, --json, --html) and `compare --html`, on out directories of tiny-model runs.

One compare run (student S; teachers S, T and a copy of T in a folder named with markup) on two prompts, one of
which carries XSS strings, and one short verify run are made once per module (a few seconds on CPU). Tests that
damage an out directory work on copies. Browser rendering is tested in tests/test_browser.py.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from clirun import Run, cli  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")

XSS_PROMPT = "Ignore this <script>alert(1)</script> and this </textarea><img src=x onerror=alert(3)> then add 2 and 3."
XSS_ID = "p<script>alert(2)</script>"
MARKUP_TEACHER = "t<b>bold"  # a folder name with markup (no "/": that would nest folders)




@dataclass
class Runs:
    compare: Path  # out dir of the compare run
    verify: Path  # out dir of the verify run
    compare_html: Path  # written by compare --html
    prompts: Path
    teachers: list[str]


def make_runs(root: Path, tiny_model) -> Runs:
    """The module's runs: compare S  S T T' (T' in a folder named with <b>), and verify S <- T. Shared with
    tests/test_browser.py."""
    student, other = tiny_model(seed=0), tiny_model(seed=1)
    marked = root / MARKUP_TEACHER
    shutil.copytree(other, marked)
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"id": XSS_ID, "prompt": XSS_PROMPT, "answer": "5"}) + "\n"
        + json.dumps({"id": "plain", "prompt": "What is 4 plus 4? Answer: <number>", "answer": "8"}) + "\n",
        encoding="utf-8")
    out, html = root / "run", root / "compare.html"
    teachers = [str(student), str(other), str(marked)]
    run = cli("compare", student, *teachers, "--prompts", prompts, "--out", out, "--samples", "3",
              "--max-new-tokens", "8", "--fail-on", "no-go", "--exit-zero", "--quiet", "--html", html)
    assert run.code == 0, run.err
    vout = root / "verify"
    run = cli("verify", student, other, "--prompts", prompts, "--eval-prompts", prompts, "--steps", "3",
              "--eval-every", "2", "--batch-prompts", "2", "--samples", "1", "--max-new-tokens", "4",
              "--cold-start", "2", "--out", vout, "--quiet")
    assert run.code == 0, run.err
    return Runs(out, vout, html, prompts, teachers)




@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model) -> Runs:
    return make_runs(tmp_path_factory.mktemp("report"), tiny_model)


@pytest.fixture(scope="module")
def html_both(runs, tmp_path_factory) -> str:
    f = tmp_path_factory.mktemp("html") / "both.html"
    run = cli("report", runs.compare, runs.verify, "--html", f)
    assert run.code == 0, run.err
    assert f"wrote {f}" in run.err.replace("\n", "")
    return f.read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------------ parsing helpers
class Page(HTMLParser):
    """Collects ids, <img> sources, <a href="#..."> targets, script blocks and the text of the page."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.ids, self.imgs, self.links, self.scripts, self.text = set(), [], [], [], []
        self._script = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            assert a["id"] not in self.ids, f"duplicate id {a['id']}"
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "a" and a.get("href", "").startswith("#"):
            self.links.append(a["href"][1:])
        if tag == "script":
            self._script = [a.get("type"), a.get("id"), ""]
        for name, value in attrs:
            assert not name.startswith("on"), f"event-handler attribute {name}={value!r}"
            if value and name in ("href", "src"):
                assert not value.startswith(("http:", "https:", "//")), f"external resource {value}"

    def handle_endtag(self, tag):
        if tag == "script" and self._script is not None:
            self.scripts.append(tuple(self._script))
            self._script = None

    def handle_data(self, data):
        if self._script is not None:
            self._script[2] += data
        else:
            self.text.append(data)


def png_size(src: str) -> tuple[int, int]:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:60]
    data = base64.b64decode(src[len(prefix):], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def token_data(page: Page, key: str = "run0") -> dict:
    blocks = [s for s in page.scripts if s[1] == f"data-{key}"]
    assert len(blocks) == 1 and blocks[0][0] == "application/json"
    return json.loads(blocks[0][2])


# ------------------------------------------------------------------------------------------------ 1. content
COMPARE_SECTIONS = ["run0-header", "run0-gate", "run0-verdicts", "run0-ranking", "run0-plots", "run0-fig-overlap",
                    "run0-fig-depth", "run0-fig-prompts", "run0-fig-dist", "run0-prompts", "run0-tokens"]


def test_compare_report_has_every_section(runs):
    html = runs.compare_html.read_text(encoding="utf-8")  # written by compare --html
    page = Page(html)
    assert set(COMPARE_SECTIONS) <= page.ids, set(COMPARE_SECTIONS) - page.ids
    results = json.loads((runs.compare / "results.json").read_text())
    n = len(results["pairs"])
    assert n == 3
    assert {f"run0-card-{i}" for i in range(n)} <= page.ids
    assert {f"run0-tok-{i}" for i in range(n)} <= page.ids
    assert set(page.links) <= page.ids, set(page.links) - page.ids  # every in-page link has a target
    text = " ".join(" ".join(page.text).split())
    gate = f"Gate {'PASSED' if results['gate']['passed'] else 'FAILED'} (fails on: no-go)"
    for needle in ("Will OPD from each of 3 teachers", "prompt set", "k=16", gate, "Verdicts", "Ranking",
                   "opd-probe 0.1.0", "torch", "transformers", "matplotlib", "overlap ratio", "Recommendations"):
        assert needle in text, needle
    for p in results["pairs"]:  # every verdict reason appears with its numbers
        for r in p["verdict"]["reasons"]:
            assert r["code"] in text
            if r["value"] is not None:
                assert f"{r['metric']} {r['value']:.3f} {r['direction']} {r['threshold']:.3f}" in text
    # worst rollouts are linked from the ranking table
    worst = [link for link in page.links if re.fullmatch(r"run0-t\d+-r\d+", link)]
    assert len(worst) == 3 * 5


def test_report_with_verify_dir_has_both_sections(html_both):
    page = Page(html_both)
    assert set(COMPARE_SECTIONS) <= page.ids
    assert {"run1-header", "run1-outcome", "run1-arms", "run1-comparisons", "run1-cold-start", "run1-fig-steps",
            "run1-fig-arms"} <= page.ids
    text = " ".join(page.text)
    assert "Runs in this report" in text and "Verdict: inconclusive" in text and "teacher − baseline" in text
    assert set(page.links) <= page.ids


def test_every_plot_is_an_inline_png(html_both):
    page = Page(html_both)
    assert len(page.imgs) == 4 + 2
    for src in page.imgs:
        w, h = png_size(src)
        assert w > 100 and h > 100


def test_token_view_data_matches_the_out_dir(runs, html_both):
    """Tooltip data: tokens in rollout order, top ids and probabilities from the right rows of the score parts."""
    from opd_probe.rundir import OutDir

    page = Page(html_both)
    data = token_data(page)
    out = OutDir(runs.compare)
    rollouts = {r.rollout_id: r for r in out.read_rollouts()}
    lengths = [len(rollouts[i].response_token_ids) for i in sorted(rollouts)]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    results = json.loads((runs.compare / "results.json").read_text())
    parts = {slug: out.read_score_parts(slug)[0][2] for slug in ("student", results["pairs"][1]["slug"])}
    views = {k: v for k, v in data["views"].items() if k.startswith("run0-t1-")}
    assert len(views) == 5
    for key, v in views.items():
        rid = int(key.rsplit("-r", 1)[1])
        assert v["tok"] == list(rollouts[rid].response_token_ids)
        assert v["pos"] == list(range(len(v["tok"])))
        rows = slice(offsets[rid], offsets[rid + 1])
        for who, slug in (("s", "student"), ("t", results["pairs"][1]["slug"])):
            assert v[who] == parts[slug]["topk_ids_LK"][rows, :5].tolist()
            np.testing.assert_allclose(v[who + "p"], np.exp(parts[slug]["topk_logprobs_LK"][rows, :5]), atol=1e-4)
            np.testing.assert_allclose(v[who + "x"], np.exp(parts[slug]["sampled_logprob_L"][rows]), atol=1e-4)
        for i, t in enumerate(v["tok"]):  # the sampled token's probability agrees with the top-k list
            if t in v["s"][i]:
                assert abs(v["sp"][i][v["s"][i].index(t)] - v["sx"][i]) < 1e-3
    tokens = json.loads((runs.compare / "tokens.json").read_text())
    for v in views.values():
        for i in v["tok"] + [x for row in v["s"] + v["t"] for x in row]:
            assert data["text"][str(i)] == tokens[str(i)]


def test_rollout_cap_and_left_out_count(runs, tmp_path):
    f = tmp_path / "r.html"
    assert cli("report", runs.compare, "--html", f, "--max-rollouts", "1").code == 0
    page = Page(f.read_text(encoding="utf-8"))
    assert len(token_data(page)["views"]) == 3
    assert "5 of 6 rollouts left out (--max-rollouts 1)" in " ".join(page.text)
    assert cli("report", runs.compare, "--html", f, "--max-rollouts", "0").code == 0
    page = Page(f.read_text(encoding="utf-8"))
    assert "run0-tokens" in page.ids and not any(s[1] == "data-run0" for s in page.scripts)


def test_report_degrades_without_states_or_tokens(runs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(runs.compare, copy)
    (copy / "tokens.json").unlink()
    f = tmp_path / "r.html"
    assert cli("report", copy, "--html", f).code == 0
    text = f.read_text(encoding="utf-8")
    assert "tokens.json is missing" in text and "⟨" in text
    (copy / "states.parquet").unlink()
    assert cli("report", copy, "--html", f).code == 0
    page = Page(f.read_text(encoding="utf-8"))
    assert "run0-fig-overlap" not in page.ids and "run0-fig-depth" in page.ids  # depth from results.json
    assert "states.parquet is missing" in " ".join(page.text)


def test_tiny_report_is_small(runs):
    assert runs.compare_html.stat().st_size < 600_000


# ------------------------------------------------------------------------------------------------ 2. escaping
def test_prompts_ids_and_names_are_escaped(runs, html_both):
    assert "<script>alert" not in html_both
    assert "</textarea>" not in html_both and "<img src=x" not in html_both
    assert "<b>bold" not in html_both
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_both  # the prompt text, shown as text
    assert "&lt;/textarea&gt;" in html_both
    assert "p&lt;script&gt;alert(2)&lt;/script&gt;" in html_both  # the prompt id
    assert ">t&lt;b&gt;bold<" in html_both  # the teacher's folder name, as its short name in a cell
    page = Page(html_both)
    assert XSS_PROMPT in "".join(page.text)  # ...and it reads back as the original text
    # the only scripts: one JSON data block per compare run, and the page's own inline script
    assert sorted(s[0] or "js" for s in page.scripts) == ["application/json", "js"]


def test_generated_text_is_escaped(runs, tmp_path):
    """Token texts come from tokens.json: markup there must render as text, in the page and in the JSON."""
    copy = tmp_path / "copy"
    shutil.copytree(runs.compare, copy)
    tokens = json.loads((copy / "tokens.json").read_text())
    evil = "<img src=x onerror=alert(4)></script><script>alert(5)</script>"
    (copy / "tokens.json").write_text(json.dumps({k: evil for k in tokens}))
    f = tmp_path / "r.html"
    assert cli("report", copy, "--html", f).code == 0
    html = f.read_text(encoding="utf-8")
    assert "<img src=x" not in html and "<script>alert" not in html and "</script><script>" not in html
    page = Page(html)
    assert evil in "".join(page.text)
    assert set(token_data(page)["text"].values()) == {evil}


# ------------------------------------------------------------------------------------------------ 3. other formats
def test_md_statuses_match_the_verdicts(runs, tmp_path):
    f = tmp_path / "s.md"
    run = cli("report", runs.compare, "--md", f)
    assert run.code == 0, run.err
    assert run.out == ""  # files only: no console table
    md = f.read_text(encoding="utf-8")
    results = json.loads((runs.compare / "results.json").read_text())
    labels = {"go": "GO", "caution": "CAUTION", "no-go": "NO-GO"}
    rows = [line for line in md.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == len(results["ranking"])
    by = {p["teacher"]: p for p in results["pairs"]}
    for line, name in zip(rows, results["ranking"]):
        cells = [c.strip() for c in line.split(" | ")]
        assert cells[2].split()[-1] == labels[by[name]["verdict"]["status"]], (line, name)
    assert "<b>" not in md and "<script>" not in md
    assert f"**Gate: {'PASSED' if results['gate']['passed'] else 'FAILED'}**" in md


def test_md_with_a_verify_dir(runs, tmp_path):
    f = tmp_path / "s.md"
    assert cli("report", runs.compare, runs.verify, "--md", f).code == 0
    md = f.read_text(encoding="utf-8")
    v = json.loads((runs.verify / "verify.json").read_text())
    assert md.count("**Run `") == 2 and "opd-probe verify" in md and f"Verdict: {v['outcome']}**" in md


def test_console_and_json(runs):
    run = cli("report", runs.compare, runs.verify)
    assert run.code == 0, run.err
    assert "overlap" in run.out and "verdict: inconclusive" in run.out
    run = cli("report", runs.compare, runs.verify, "--json")
    docs = json.loads(run.out)
    assert docs[0] == json.loads((runs.compare / "results.json").read_text())
    assert docs[1] == json.loads((runs.verify / "verify.json").read_text())
    assert json.loads(cli("report", runs.verify, "--json").out)["kind"] == "verify"


# ------------------------------------------------------------------------------------------------ 4. errors
def _assert_exit_2(run: Run, *needles):
    assert run.code == 2, (run.code, run.err)
    assert "error:" in run.err and "fix:" in run.err and "Traceback" not in run.err, run.err
    for n in needles:
        assert n in run.err, (n, run.err)


def test_report_on_a_missing_dir(tmp_path):
    _assert_exit_2(cli("report", tmp_path / "nope", "--html", tmp_path / "r.html"), "does not exist")
    assert not (tmp_path / "r.html").exists()


def test_report_on_a_dir_without_results(tmp_path):
    _assert_exit_2(cli("report", tmp_path), "no results.json, verify.json or selection.json")
    (tmp_path / "config.json").write_text("{}")
    _assert_exit_2(cli("report", tmp_path, "--html", tmp_path / "r.html"), "did not finish")


@pytest.mark.parametrize("name, content", [
    ("results.json", "{not json"),
    ("results.json", json.dumps({"schema_version": 1})),
    ("verify.json", "[1, 2"),
    ("verify.json", json.dumps({"kind": "verify", "steps": []})),
    ("selection.json", "{torn"),
    ("selection.json", json.dumps({"kind": "select", "config": {}})),
])
def test_report_on_a_corrupt_file(runs, tmp_path, name, content):
    copy = tmp_path / "copy"
    if name == "selection.json":  # a select-prompts work directory holds no results.json / verify.json
        copy.mkdir()
    else:
        shutil.copytree(runs.compare if name == "results.json" else runs.verify, copy)
    (copy / name).write_text(content)
    _assert_exit_2(cli("report", copy, "--html", tmp_path / "r.html"), name)
    _assert_exit_2(cli("report", copy), name)


def test_report_on_a_corrupt_states_file(runs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(runs.compare, copy)
    (copy / "states.parquet").write_bytes(b"PAR1 garbage")
    _assert_exit_2(cli("report", copy, "--html", tmp_path / "r.html"), "states.parquet")


def test_unwritable_html_path(runs, tmp_path):
    (tmp_path / "file").write_text("x")
    _assert_exit_2(cli("report", runs.compare, "--html", tmp_path / "file" / "r.html"), "--html")


# ------------------------------------------------------------------------------------------------ 5. the shared pieces
def test_fmt_is_the_one_number_formatter():
    from opd_probe.report.view import MISSING, ci_range, criterion, fmt, gains, num
    from opd_probe.metrics import Estimate

    for missing in (None, float("nan"), np.nan, float("inf"), -float("inf"), "abc", [1]):
        assert fmt(missing) == MISSING == "–" and num(missing) is None
        assert fmt(missing, 2, sign=True) == fmt(missing, general=True) == "–"
    assert fmt(0.12345) == "0.123" and fmt(2, 1) == "2.0" and fmt("0.5") == "0.500"
    assert fmt(np.float32(0.5)) == "0.500" and fmt(np.int64(3), 0) == "3"
    assert fmt(0.25, 2, sign=True) == "+0.25" and fmt(-0.5, sign=True) == "-0.500" and fmt(0, 2, sign=True) == "+0.00"
    assert fmt(1234.5, general=True) == "1.23e+03" and fmt(0.012345, general=True) == "0.0123"
    assert fmt(0.5, general=True) == "0.5" and fmt(12.0, 2, general=True) == "12"
    assert ci_range(Estimate(0.5, 0.25, 0.75, 10)) == "0.25–0.75"
    assert ci_range(Estimate(0.5, float("nan"), 0.75, 10), 2) == "––0.8"
    from opd_probe.types import ContinuationGain

    rows = [ContinuationGain(depth=d, n=10, teacher_accuracy=0.5, student_accuracy=0.5, gain=g, se=0.1)
            for d, g in ((0, 0.123), (64, None), (128, -0.05))]
    assert gains(rows) == \
        "+0.12@0, -0.05@128"
    assert gains(None) == gains([]) == ""
    assert (criterion(True), criterion(False), criterion(None)) == ("pass", "fail", "n/a")


def test_metric_columns_come_from_metrics_METRICS():
    from opd_probe.metrics import METRICS
    from opd_probe.report import plots, view

    assert list(view.COLUMNS) == list(METRICS)
    for m, (_, higher) in METRICS.items():
        c = view.COLUMNS[m]
        assert c.metric == m and c.higher_is_better is higher
        assert c.arrow == {True: " ↑", False: " ↓", None: ""}[higher]
        assert c.header().endswith(c.arrow) and c.header(short=True).endswith(c.arrow)
        assert "\n" not in c.label and c.header(arrow=False) == c.label
    # each table picks from the one table (same objects), so a direction changed in METRICS reaches every header
    for table in (view.CONSOLE_RANKING, view.HTML_RANKING, view.TEMPLATE_METRICS, view.SELECTION_COLUMNS):
        assert all(view.COLUMNS[c.metric] is c for c in table)
    assert [c.header() for c in view.HTML_RANKING] == [
        "overlap ratio ↑", "mass (student) ↑", "mass (teacher) ↑", "support mass ↑", "unsupported share ↓",
        "entropy gap ↓", "top-k rev. KL", "sampled rev. KL", "top-1 agree ↑"]
    assert [c.header(short=True) for c in view.CONSOLE_RANKING][4:] == [
        "entropy\ngap ↓", "top-k\nrev. KL", "sampled\nrev. KL", "cov.\nstud.", "top-1\nagree ↑"]
    assert [c.header(short=True, arrow=False).replace("\n", " ") for c in view.SELECTION_COLUMNS] == [
        "overlap ratio", "mass stud.", "mass teach.", "top-k rev. KL", "entropy gap", "student entropy",
        "teacher entropy"]
    assert [c.label for c in view.TEMPLATE_METRICS] == ["overlap ratio", "mass (student)", "top-k rev. KL",
                                                        "entropy gap"]
    assert [t for _, t in plots.DEPTH_METRICS] == ["overlap ratio ↑", "overlap mass (student) ↑",
                                                   "entropy gap (nats) ↓", "top-k reverse KL (nats/token)"]


def test_depth_bins_from_states_use_the_prompt_bootstrap_of_metrics():
    """Hand-derived means, and the same CIs as metrics.aggregate on the same depth bins (one bootstrap)."""
    import pandas as pd

    from opd_probe import metrics
    from opd_probe.report.html import _depth_from_states

    # prompt a: positions 0, 1, 2, 5; prompt b: positions 0, 1 (NaN entropy gap at b/1: left out of its mean)
    df = pd.DataFrame({"prompt_id": ["a", "a", "a", "a", "b", "b"], "position": [0, 1, 2, 5, 0, 1],
                       "overlap_ratio": [1.0, 0.0, 0.5, 0.25, 0.0, 0.5],
                       "overlap_mass_student": [0.9, 0.1, 0.5, 0.2, 0.3, 0.3],
                       "entropy_gap": [0.2, 0.4, 0.1, 0.3, 0.6, np.nan],
                       "topk_reverse_kl": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})
    out = _depth_from_states(df, width=2, level=0.9, seed=3)
    assert out["x"] == [1.0, 3.0, 5.0]  # bin [4, 6) holds only position 5; no bin is empty here
    mean, low, high = out["metrics"]["overlap_ratio"]
    assert mean == pytest.approx([1.5 / 4, 0.5, 0.25])
    assert out["metrics"]["entropy_gap"][0] == pytest.approx([(0.2 + 0.4 + 0.6) / 3, 0.1, 0.3])
    agg = metrics.aggregate({m: df[m].to_numpy() for m in out["metrics"]}, (df["prompt_id"] == "b").to_numpy(int),
                            df["position"].to_numpy(), 2, [0, 2, 4], n_boot=200, seed=3, level=0.9)
    for m, (mean, low, high) in out["metrics"].items():
        want = [b["metrics"][m] for b in agg["depth"]]
        assert mean == pytest.approx([e.mean for e in want]), m
        assert low == pytest.approx([e.ci_low for e in want], nan_ok=True), m
        assert high == pytest.approx([e.ci_high for e in want], nan_ok=True), m


def test_score_parts_read_one_rollout_and_pool_scores(tmp_path):
    """OutDir.read_score_parts(rollout=) is the reader the token view uses; read_pool_scores reads scores.jsonl."""
    from opd_probe.rundir import OutDir, read_pool_scores

    out = OutDir(tmp_path)
    out.write_score_part("s", 0, 1, {"topk_ids_LK": np.zeros((3, 2), int)})
    out.write_score_part("s", 2, 3, {"topk_ids_LK": np.ones((5, 2), int)})
    (out.scores_dir("s") / "part-notes.npz").write_bytes(b"not a part")  # not part-<first>-<last>: skipped
    assert [(a, b) for a, b, _ in out.read_score_parts("s")] == [(0, 1), (2, 3)]
    [(first, last, arrays)] = out.read_score_parts("s", rollout=3)
    assert (first, last) == (2, 3) and arrays["topk_ids_LK"].shape == (5, 2)
    assert out.read_score_parts("s", rollout=9) == [] and out.read_score_parts("other", rollout=0) == []
    f = tmp_path / "scores.jsonl"
    assert read_pool_scores(f) == {}
    f.write_text('{"index": 2, "x": 1}\n{"index": 0}\n{"index": 5, "x"', encoding="utf-8")  # torn last line
    assert read_pool_scores(f) == {2: {"index": 2, "x": 1}, 0: {"index": 0}}
