"""The gate's exit codes, config files, thresholds and summaries through the real CLI (``opd_probe.cli.main``).

Contract (docs/ci.md): 0 = every gated teacher passed (or no gate), 1 = the gate tripped, 2 = no verdict (bad
input or any crash), never 1 for an error. Tiny random models, 2 prompts x 1 sample x 4 tokens: a run takes well
under a second. Every test runs in its own empty working directory, so a [tool.opd-probe] table in the repository's
pyproject.toml cannot leak in.

Teachers: the student itself (CAUTION: weak-signal, KL 0), a copy perturbed by 5% (GO) and a different random
model (NO-GO: pattern-mismatch).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clirun import Run, assert_error, cli  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
TINY_PROMPTS = REPO / "sample_prompts" / "tiny.jsonl"
TINY = ["--limit", "2", "--samples", "1", "--max-new-tokens", "4", "--quiet"]




def compare(student, *teachers, out, extra=(), tiny=True) -> Run:
    return cli("compare", student, *teachers, "--out", out, "--prompts", TINY_PROMPTS, *(TINY if tiny else ()),
               *extra)


def results_json(out) -> dict:
    return json.loads((Path(out) / "results.json").read_text())


def verdict(doc: dict, teacher) -> dict:
    return next(p["verdict"] for p in doc["pairs"] if p["teacher"] == str(teacher))



# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True)
def empty_cwd(tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture(scope="module")
def student(tiny_model) -> Path:
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def close(tiny_model, student) -> Path:
    return tiny_model(seed=2, init_from=student, perturb=0.05)


@pytest.fixture(scope="module")
def other(tiny_model) -> Path:
    return tiny_model(seed=1)


@pytest.fixture(scope="module")
def full(tmp_path_factory, student, close, other):
    """compare S  S P O --gate --summary-md FILE (table output, not JSON)."""
    d = tmp_path_factory.mktemp("full")
    md = d / "step_summary.md"
    md.write_text("earlier step\n")  # --summary-md appends, like $GITHUB_STEP_SUMMARY
    run = compare(student, student, close, other, out=d / "run", extra=["--gate", "--summary-md", md])
    return run, d / "run", md


# ------------------------------------------------------------------------------------------------ verdicts + outputs
def test_full_run_verdicts_and_gate(full, student, close, other):
    run, out, _ = full
    assert run.code == 1, run.err  # the NO-GO teacher trips the default gate
    doc = results_json(out)
    statuses = {p["teacher"]: p["verdict"]["status"] for p in doc["pairs"]}
    assert statuses == {str(student): "caution", str(close): "go", str(other): "no-go"}
    assert doc["ranking"] == [str(close), str(student), str(other)]
    assert doc["gate"] == {"fail_on": ["no-go"], "passed": False, "tripped_by": [str(other)]}
    for p in doc["pairs"]:
        v = p["verdict"]
        assert set(v) >= {"status", "reasons", "recommendations"}
        for r in v["reasons"]:
            assert set(r) >= {"code", "severity", "metric", "value", "threshold", "direction", "message"}
    assert [r["code"] for r in verdict(doc, student)["reasons"]] == ["weak-signal"]
    assert verdict(doc, close)["reasons"] == []
    assert {r["code"] for r in verdict(doc, other)["reasons"]} == {"pattern-mismatch"}
    assert any("--cold-start" in r for r in verdict(doc, other)["recommendations"])
    assert doc["thresholds"]["unsupported_nogo"] == 0.05


def test_stdout_shows_statuses_and_reasons(full):
    run = full[0]
    for word in ("GO", "CAUTION", "NO-GO", "weak-signal", "pattern-mismatch", "unsupported"):
        assert word in run.out, word
    assert "gate tripped" in run.err
    assert not run.out.lstrip().startswith("{")


def test_summary_markdown(full, student, close, other):
    _, out, md = full
    inside = (out / "summary.md").read_text()
    for text in ("✅ GO", "⚠️ CAUTION", "⛔ NO-GO", "**Gate: FAILED**", "fails on: no-go", "weak-signal",
                 "pattern-mismatch", "### Recommendations"):
        assert text in inside, text
    appended = md.read_text()
    assert appended == "earlier step\n" + inside
    rows = [line for line in inside.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) == 3 and "✅ GO" in rows[0] and "⚠️ CAUTION" in rows[1] and "⛔ NO-GO" in rows[2]


def test_summary_md_is_written_without_a_gate(student, tmp_path):
    run = compare(student, student, out=tmp_path / "run")
    assert run.code == 0, run.err
    text = (tmp_path / "run" / "summary.md").read_text()
    assert "⚠️ CAUTION" in text and "Gate:" not in text
    assert results_json(tmp_path / "run")["gate"] is None


# ------------------------------------------------------------------------------------------------ exit codes
@pytest.mark.parametrize("flags,code,fail_on", [
    (["--gate"], 0, ["no-go"]),
    (["--strict"], 1, ["no-go", "caution"]),
    (["--fail-on", "caution"], 1, ["caution"]),
    (["--fail-on", "no-go,caution", "--exit-zero"], 0, ["no-go", "caution"]),
])
def test_caution_teacher(student, tmp_path, flags, code, fail_on):
    run = compare(student, student, out=tmp_path / "run", extra=flags)
    assert run.code == code, run.err
    doc = results_json(tmp_path / "run")
    assert verdict(doc, student)["status"] == "caution"
    assert doc["gate"]["fail_on"] == fail_on
    assert doc["gate"]["passed"] is (fail_on == ["no-go"])


def test_nogo_teacher_trips_the_gate(other, student, tmp_path):
    run = compare(student, other, out=tmp_path / "run", extra=["--gate"])
    assert run.code == 1, run.err
    doc = results_json(tmp_path / "run")
    assert verdict(doc, other)["status"] == "no-go"
    assert doc["gate"] == {"fail_on": ["no-go"], "passed": False, "tripped_by": [str(other)]}
    assert "gate tripped" in run.err


def test_exit_zero_reports_the_gate_but_exits_0(other, student, tmp_path):
    run = compare(student, other, out=tmp_path / "run", extra=["--gate", "--exit-zero"])
    assert run.code == 0, run.err
    doc = results_json(tmp_path / "run")
    assert doc["gate"]["passed"] is False and doc["gate"]["tripped_by"] == [str(other)]
    assert "--exit-zero" in run.err
    assert "**Gate: FAILED**" in (tmp_path / "run" / "summary.md").read_text()


def test_no_gate_exits_0_even_on_nogo(other, student, tmp_path):
    run = compare(student, other, out=tmp_path / "run", extra=["--json"])
    assert run.code == 0, run.err
    doc = json.loads(run.out)
    assert verdict(doc, other)["status"] == "no-go" and doc["gate"] is None


@pytest.mark.parametrize("value", ["bogus", "go", "no-go,maybe"])
def test_bad_fail_on_is_exit_2(student, tmp_path, value):
    run = compare(student, student, out=tmp_path / "run", extra=["--fail-on", value])
    assert_error(run, "--fail-on")
    assert not (tmp_path / "run" / "results.json").exists()


def test_thresholds_from_flags_turn_the_pattern_reasons_off(other, student, tmp_path):
    flags = ["--gate"]
    for item in ("unsupported_nogo=1.0", "entropy_gap_caution=100"):
        flags += ["--threshold", item]
    run = compare(student, other, out=tmp_path / "run", extra=flags)
    doc = results_json(tmp_path / "run")
    v = verdict(doc, other)
    assert not any(r["code"] == "pattern-mismatch" for r in v["reasons"]), v
    assert v["status"] == "go" and run.code == 0, (v, run.err)
    assert doc["thresholds"]["entropy_gap_caution"] == 100.0 and doc["thresholds"]["unsupported_nogo"] == 1.0


@pytest.mark.parametrize("item,needle", [("nonsense=1", "nonsense"),
                                         ("unsupported_nogo=high", "unsupported_nogo"),
                                         ("unsupported_nogo", "NAME=VALUE")])
def test_bad_threshold_flag_is_exit_2(student, tmp_path, item, needle):
    run = compare(student, student, out=tmp_path / "run", extra=["--gate", "--threshold", item])
    assert_error(run, needle)


# ------------------------------------------------------------------------------------------------ config files
def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_file_fills_in_and_flags_win(student, tmp_path):
    cfg = write(tmp_path / "opd.toml", "[tool.opd-probe]\nsamples = 1\nlimit = 2\nmax_new_tokens = 3\n"
                                       "[tool.opd-probe.thresholds]\nweak_signal_kl = 0.5\nmin_answer_gain = 0.5\n")
    run = compare(student, student, out=tmp_path / "run", tiny=False,
                  extra=["--config", cfg, "--max-new-tokens", "4", "--threshold", "weak_signal_kl=-1", "--quiet",
                         "--gate", "--fail-on", "caution"])
    assert run.code == 0, run.err
    doc = results_json(tmp_path / "run")
    assert doc["config"]["samples"] == 1 and doc["config"]["limit"] == 2  # from the file
    assert doc["config"]["max_new_tokens"] == 4  # the flag beats the file's 3
    assert doc["rollouts"]["count"] == 2
    assert doc["thresholds"]["weak_signal_kl"] == -1.0  # the flag beats the file's 0.5
    assert doc["thresholds"]["min_answer_gain"] == 0.5  # from the file
    assert verdict(doc, student)["status"] == "go"  # no weak signal at KL 0 under a -1 line


def test_pyproject_in_the_working_directory_is_read(student, tmp_path, empty_cwd):
    write(empty_cwd / "pyproject.toml", '[project]\nname = "x"\n\n[tool.opd-probe]\nsamples = 1\n'
                                        'fail_on = ["no-go", "caution"]\n')
    run = compare(student, student, out=tmp_path / "run", extra=["--gate"])
    assert run.code == 1, run.err  # the file's fail_on makes the CAUTION trip --gate
    doc = results_json(tmp_path / "run")
    assert doc["gate"]["fail_on"] == ["no-go", "caution"]


def test_config_fail_on_is_used_with_gate_only(student, tmp_path):
    cfg = write(tmp_path / "opd.toml", '[tool.opd-probe]\nfail_on = ["no-go", "caution"]\n')
    run = compare(student, student, out=tmp_path / "gated", extra=["--config", cfg, "--gate"])
    assert run.code == 1, run.err
    assert results_json(tmp_path / "gated")["gate"] == {"fail_on": ["no-go", "caution"], "passed": False,
                                                        "tripped_by": [str(student)]}
    # without a gate flag the file's list does not gate (docs/ci.md: --gate fails on the file's fail_on)
    run = compare(student, student, out=tmp_path / "free", extra=["--config", cfg])
    assert run.code == 0, run.err
    assert results_json(tmp_path / "free")["gate"] is None
    # an explicit --fail-on beats the file's list
    run = compare(student, student, out=tmp_path / "flag", extra=["--config", cfg, "--fail-on", "no-go"])
    assert run.code == 0, run.err
    assert results_json(tmp_path / "flag")["gate"]["fail_on"] == ["no-go"]


@pytest.mark.parametrize("text,needles", [
    ("[tool.opd-probe]\nsampels = 1\n", ["sampels"]),
    ("[tool.opd-probe]\nsamples = 1\n[tool.opd-probe.thresholds]\nunsupported_nogo = \"high\"\n", ["unsupported_nogo"]),
    ("[tool.opd-probe]\nsamples = 1\n[tool.opd-probe.thresholds]\nmass_nogoo = 0.5\n", ["mass_nogoo"]),
    ("[tool.opd-probe]\nthresholds = 3\n", ["thresholds"]),
    ("[tool.opd-probe]\nsamples = [1, 2]\n", ["samples"]),
    ("[tool.opd-probe\nsamples = 1\n", ["not valid TOML"]),
])
def test_bad_config_file_is_exit_2(student, tmp_path, text, needles):
    cfg = write(tmp_path / "opd.toml", text)
    run = compare(student, student, out=tmp_path / "run", extra=["--config", cfg, "--gate"])
    assert_error(run, *needles)
    assert "fix:" in run.err
    assert not (tmp_path / "run" / "results.json").exists()


def test_missing_config_file_is_exit_2(student, tmp_path):
    run = compare(student, student, out=tmp_path / "run", extra=["--config", tmp_path / "nope.toml"])
    assert_error(run, "nope.toml")


# ------------------------------------------------------------------------------------------------ crashes
def test_a_crash_while_deciding_is_exit_2_never_1(student, other, tmp_path, monkeypatch):
    import opd_probe.run.probe
    import opd_probe.verdict

    def boom(*a, **k):
        raise RuntimeError("injected verdict crash")

    monkeypatch.setattr(opd_probe.verdict, "decide", boom)
    monkeypatch.setattr(opd_probe.run.probe, "decide", boom)  # the pipeline imported the name itself
    for flags in (["--gate"], ["--strict"], ["--gate", "--exit-zero"]):
        run = compare(student, other, out=tmp_path / "run", extra=[*flags, "--overwrite"])
        assert run.code == 2, (flags, run.err)
        assert "internal error" in run.err and "injected verdict crash" in run.err
        assert "Traceback" not in run.err
        assert not (tmp_path / "run" / "results.json").exists()
