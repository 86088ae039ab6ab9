"""End-to-end tests of `opd-probe compare` / `report` through the real entry point ``opd_probe.cli.main``.

Tiny random models (conftest ``tiny_model``) and 3 prompts x 2 samples x 8 tokens keep every run to a few
seconds on CPU. The ``base`` run (student S scored by teachers S and T) is made once per module; tests that
need an out directory to damage or overwrite work on copies of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from clirun import Run, cli  # noqa: F401


pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
TINY_PROMPTS = REPO / "sample_prompts" / "tiny.jsonl"
SMALL = ["--samples", "2", "--max-new-tokens", "8", "--limit", "3"]  # the numbers of every full run here
TINIEST = ["--samples", "1", "--max-new-tokens", "2", "--limit", "1", "--quiet"]  # runs that only need to start




def compare(student, *teachers, out, extra=(), prompts=TINY_PROMPTS) -> Run:
    args = ["compare", student, *teachers, "--out", out, *extra]
    if prompts is not None:
        args += ["--prompts", prompts]
    return cli(*args)


def assert_error(run: Run, *needles: str) -> None:
    """Exit 2 with an 'error:' line, a 'fix:' line, every needle, and no traceback."""
    assert run.code == 2, (run.code, run.err)
    assert "error:" in run.err and "fix:" in run.err, run.err
    assert "Traceback" not in run.err, run.err
    for n in needles:
        assert n in run.err, (n, run.err)


def pooled(results, teacher) -> dict:
    return {m: e.to_dict() for m, e in results.pair(str(teacher)).pooled.items()}


def pair_numbers(results, teacher) -> dict:
    """Everything numeric one pair concluded (not its slug, timings or model provenance)."""
    d = results.pair(str(teacher)).to_dict()
    return {k: d[k] for k in ("pooled", "depth", "per_prompt")}


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def student(tiny_model) -> Path:
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def other(tiny_model) -> Path:
    """A different random model with the student's tokenizer."""
    return tiny_model(seed=1)


@pytest.fixture(scope="module")
def base(tmp_path_factory, student, other):
    """compare S  S T  --json (progress bars on: stdout must still be pure JSON)."""
    out = tmp_path_factory.mktemp("base") / "run"
    run = compare(student, student, other, out=out, extra=[*SMALL, "--json"])
    assert run.code == 0, run.err
    from opd_probe.rundir import load_results

    return run, out, load_results(out)


@pytest.fixture
def base_copy(base, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(base[1], dst)
    return dst


# ------------------------------------------------------------------------------------------------ 1. outputs
def test_compare_writes_the_out_dir_and_pure_json(base, student, other):
    run, out, results = base
    assert run.code == 0
    for name in ("config.json", "results.json", "states.parquet", "rollouts.jsonl"):
        assert (out / name).is_file(), name
    slugs = [p.slug for p in results.pairs]
    assert sorted(p.name for p in (out / "scores").iterdir()) == sorted(slugs + ["student"])

    assert "sampling student rollouts" in run.err  # progress bars were on, and went to stderr...
    doc = json.loads(run.out)  # ...so the whole of stdout is one JSON document
    assert doc == json.loads((out / "results.json").read_text())
    assert [p["teacher"] for p in doc["pairs"]] == [str(student), str(other)]


def test_results_round_trip(base):
    from opd_probe.rundir import load_results
    from opd_probe.types import ProbeResults

    r = load_results(base[1])
    assert ProbeResults.from_dict(r.to_dict()).to_dict() == r.to_dict()
    assert r.to_dict() == json.loads((base[1] / "results.json").read_text())


def test_states_and_rollouts_have_one_row_each(base, student, other):
    import pandas as pd

    _, out, results = base
    states = pd.read_parquet(out / "states.parquet")
    assert len(states) == 2 * results.rollouts["states"]
    assert states.groupby("teacher").size().to_dict() == {str(student): results.rollouts["states"],
                                                            str(other): results.rollouts["states"]}
    lines = (out / "rollouts.jsonl").read_text().splitlines()
    assert len(lines) == 3 * 2 == results.rollouts["count"]
    assert sorted(json.loads(line)["rollout_id"] for line in lines) == list(range(6))


def test_report_shows_a_finished_run(base, student):
    run = cli("report", base[1], "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out) == json.loads((base[1] / "results.json").read_text())
    table = cli("report", base[1])
    assert table.code == 0, table.err
    assert "overlap" in table.out and str(student.name) in table.out


# ------------------------------------------------------------------------------------------------ 2. invariants
def test_student_as_its_own_teacher_is_perfect(base, student):
    p = base[2].pair(str(student)).pooled
    assert p["overlap_ratio"].mean == pytest.approx(1.0, abs=1e-6)
    assert p["overlap_mass_student"].mean == pytest.approx(p["topk_coverage_student"].mean, abs=1e-6)
    assert p["overlap_mass_teacher"].mean == pytest.approx(p["topk_coverage_student"].mean, abs=1e-6)
    assert p["topk_reverse_kl"].mean == pytest.approx(0.0, abs=1e-5)
    assert p["sampled_reverse_kl"].mean == pytest.approx(0.0, abs=1e-5)
    assert p["entropy_gap"].mean == pytest.approx(0.0, abs=1e-5)


def test_a_different_model_overlaps_less_and_ranks_second(base, student, other):
    results = base[2]
    assert results.pair(str(other)).pooled["overlap_ratio"].mean < 1.0
    assert results.ranking == (str(student), str(other))


# ------------------------------------------------------------------------------------------------ 3. determinism
def test_same_command_same_results(base, student, other, tmp_path):
    from opd_probe.rundir import load_results

    run = compare(student, student, other, out=tmp_path / "again", extra=[*SMALL, "--quiet"])
    assert run.code == 0, run.err
    assert (tmp_path / "again" / "rollouts.jsonl").read_bytes() == (base[1] / "rollouts.jsonl").read_bytes()
    again = load_results(tmp_path / "again")
    for t in (student, other):
        assert pair_numbers(again, t) == pair_numbers(base[2], t)


# ------------------------------------------------------------------------------------------------ 4. --reuse
@pytest.fixture(scope="module")
def reuse_source(tmp_path_factory, student):
    """Run A: the student with a single teacher (itself)."""
    out = tmp_path_factory.mktemp("reuse") / "A"
    run = compare(student, student, out=out, extra=[*SMALL, "--quiet"])
    assert run.code == 0, run.err
    return out


def test_reuse_scores_a_new_teacher_on_the_old_states(base, reuse_source, student, other, tmp_path):
    from opd_probe.rundir import load_results

    out = tmp_path / "B"
    run = compare(student, other, out=out, prompts=None,
                  extra=["--reuse", reuse_source, "--samples", "2", "--max-new-tokens", "8", "--quiet", "--json"])
    assert run.code == 0, run.err
    rollouts_a = (reuse_source / "rollouts.jsonl").read_bytes()
    assert (out / "rollouts.jsonl").read_bytes() == rollouts_a  # copied, not resampled
    assert rollouts_a == (base[1] / "rollouts.jsonl").read_bytes()  # A and the base run share the seed
    b = load_results(out)
    assert [p.teacher for p in b.pairs] == [str(other)] and b.ranking == (str(other),)
    assert b.rollouts["reused"] is True
    assert b.rollouts["states"] == base[2].rollouts["states"]
    assert pair_numbers(b, other) == pair_numbers(base[2], other)


def test_reuse_with_another_student_is_refused(reuse_source, other, tmp_path):
    run = compare(other, other, out=tmp_path / "C", prompts=None, extra=["--reuse", reuse_source, "--quiet"])
    assert_error(run, "--reuse", "same student")
    assert not (tmp_path / "C" / "results.json").exists()


def test_reuse_with_another_top_k_is_refused(reuse_source, student, other, tmp_path):
    run = compare(student, other, out=tmp_path / "C", prompts=None,
                  extra=["--reuse", reuse_source, "--top-k", "8", "--quiet"])
    assert_error(run, "--top-k 16")


# ------------------------------------------------------------------------------------------------ 5. resume
def test_resume_after_an_interruption_gives_the_uninterrupted_results(base, base_copy, student, other):
    from opd_probe.rundir import load_results

    run_dir = base_copy
    (run_dir / "results.json").unlink()
    (run_dir / "states.parquet").unlink()
    other_slug = base[2].pair(str(other)).slug
    shutil.rmtree(run_dir / "scores" / other_slug)  # this teacher never finished; the others did
    lines = (run_dir / "rollouts.jsonl").read_text().splitlines(keepends=True)
    # prompt 0 whole, prompt 1 half (1 of 2 samples), then a torn half line: a write killed mid-way
    (run_dir / "rollouts.jsonl").write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])

    run = compare(student, student, other, out=run_dir, extra=[*SMALL, "--quiet", "--resume"])
    assert run.code == 0, run.err
    assert (run_dir / "rollouts.jsonl").read_bytes() == (base[1] / "rollouts.jsonl").read_bytes()
    resumed = load_results(run_dir)
    for t in (student, other):
        assert pair_numbers(resumed, t) == pair_numbers(base[2], t)
    assert resumed.ranking == base[2].ranking
    # the saved score parts were reused, the deleted one was redone
    assert resumed.pair(str(student)).timings["scored_states"] == 0
    assert resumed.pair(str(other)).timings["scored_states"] == base[2].rollouts["states"]


def test_interrupt_then_resume(base, student, other, tmp_path, monkeypatch):
    """Ctrl-C while a teacher scores -> exit 2 naming --resume; the same command plus --resume finishes it."""
    from opd_probe.backends.hf import HFModel
    from opd_probe.rundir import load_results

    real_score = HFModel.score

    def score(self, prompt_ids, response_ids, k, query_ids_LQ=None):
        if query_ids_LQ is not None:  # scoring at the student's states: only teachers do that
            raise KeyboardInterrupt
        return real_score(self, prompt_ids, response_ids, k, query_ids_LQ)

    out = tmp_path / "run"
    monkeypatch.setattr(HFModel, "score", score)
    run = compare(student, student, other, out=out, extra=[*SMALL, "--quiet"])
    assert run.code == 2, run.err
    assert "--resume" in run.err and "Traceback" not in run.err
    assert not (out / "results.json").exists()
    assert len((out / "rollouts.jsonl").read_text().splitlines()) == 6
    monkeypatch.setattr(HFModel, "score", real_score)

    run = compare(student, student, other, out=out, extra=[*SMALL, "--quiet", "--resume"])
    assert run.code == 0, run.err
    resumed = load_results(out)
    for t in (student, other):
        assert pair_numbers(resumed, t) == pair_numbers(base[2], t)
    assert resumed.rollouts["sampled_tokens"] == 0  # nothing was sampled again


def test_resume_with_other_numbers_is_refused(base_copy, student, other):
    before = snapshot(base_copy)
    run = compare(student, student, other, out=base_copy, extra=[*SMALL, "--quiet", "--resume", "--top-k", "8"])
    assert_error(run, "top_k")
    assert snapshot(base_copy) == before


def test_resume_without_a_run_is_refused(student, other, tmp_path):
    run = compare(student, other, out=tmp_path / "empty", extra=[*TINIEST, "--resume"])
    assert_error(run, "--resume", "no run to resume")


def test_non_empty_out_dir_is_left_alone(base_copy, student, other):
    before = snapshot(base_copy)
    run = compare(student, student, other, out=base_copy, extra=[*SMALL, "--quiet"])
    assert_error(run, "not empty", "--overwrite", "--resume")
    assert snapshot(base_copy) == before


def test_overwrite_replaces_the_previous_run(base, base_copy, student, other):
    from opd_probe.rundir import load_results

    run = compare(student, other, out=base_copy, extra=[*TINIEST, "--overwrite"])
    assert run.code == 0, run.err
    new = load_results(base_copy)
    assert [p.teacher for p in new.pairs] == [str(other)] and new.config["limit"] == 1
    assert len((base_copy / "rollouts.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in (base_copy / "scores").iterdir()) == sorted(["student", new.pairs[0].slug])
    old_slug = base[2].pair(str(student)).slug
    assert not (base_copy / "scores" / old_slug).exists()  # the old run's parts are gone, not mixed in


def test_overwrite_refuses_a_dir_with_foreign_files(base_copy, student, other):
    (base_copy / "notes.txt").write_text("mine")
    before = snapshot(base_copy)
    run = compare(student, other, out=base_copy, extra=[*TINIEST, "--overwrite"])
    assert_error(run, "notes.txt")
    assert snapshot(base_copy) == before


# ------------------------------------------------------------------------------------------------ 6. errors
def test_missing_student_path(other, tmp_path):
    run = compare(tmp_path / "no-such-model", other, out=tmp_path / "o", extra=TINIEST)
    assert_error(run, "student", "no-such-model", "does not exist")


def test_missing_teacher_path(student, tmp_path):
    run = compare(student, tmp_path / "no-such-teacher", out=tmp_path / "o", extra=TINIEST)
    assert_error(run, "teacher", "no-such-teacher", "does not exist")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory, tok_dir) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("bert") / "bert"
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=37)
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_not_a_causal_lm(bert_dir, student, tmp_path):
    run = compare(bert_dir, student, out=tmp_path / "o", extra=TINIEST)
    assert_error(run, "not a causal language model", "bert")


def test_hub_id_while_offline(student, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # make sure no local folder of that name exists
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = compare("someorg/somemodel", student, out=tmp_path / "o", extra=TINIEST)
    assert_error(run, "someorg/somemodel", "offline")


@pytest.fixture(scope="module")
def other_tok_teacher(tmp_path_factory, tiny_model) -> Path:
    import tiny_models

    tok = tiny_models.build_tokenizer(tmp_path_factory.mktemp("tok_other") / "other", variant="other")
    return tiny_model(seed=2, tokenizer_dir=tok)


def test_vocab_mismatch_names_the_first_differing_id(student, other_tok_teacher, tmp_path):
    from transformers import AutoTokenizer

    s = {i: t for t, i in AutoTokenizer.from_pretrained(student).get_vocab().items()}
    t = {i: t for t, i in AutoTokenizer.from_pretrained(other_tok_teacher).get_vocab().items()}
    first = min(i for i in s if t.get(i) != s[i])

    # verify trains on the student's ids, so it needs the student's tokenizer (compare aligns on text instead)
    run = cli("verify", student, other_tok_teacher, "--prompts", TINY_PROMPTS, "--out", tmp_path / "o", "--steps", "1",
              "--quiet")
    assert_error(run, f"id {first}:", repr(s[first]), repr(t[first]))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_empty_prompt_set(student, tmp_path):
    prompts = _write(tmp_path / "blank.jsonl", "\n\n   \n\n")
    run = compare(student, student, out=tmp_path / "o", prompts=prompts, extra=TINIEST)
    assert_error(run, "blank.jsonl", "empty")
    assert not (tmp_path / "o").exists()  # validated before anything was written


def test_malformed_prompt_file_names_the_line(student, tmp_path):
    prompts = _write(tmp_path / "bad.jsonl", '{"prompt": "one"}\n{"prompt": "two"}\n{"prompt": "three"\n')
    run = compare(student, student, out=tmp_path / "o", prompts=prompts, extra=TINIEST)
    assert_error(run, "bad.jsonl", "line 3")


def test_prompt_longer_than_the_context(student, tmp_path):
    prompts = _write(tmp_path / "long.jsonl", json.dumps({"id": "long", "prompt": " ".join(["apples"] * 2000)}) + "\n")
    run = compare(student, student, out=tmp_path / "o", prompts=prompts, extra=TINIEST)
    assert_error(run, "'long'", "context of 512 tokens")


def test_top_k_larger_than_the_vocabulary(student, tmp_path):
    run = compare(student, student, out=tmp_path / "o", extra=[*TINIEST, "--top-k", "100000"])
    assert_error(run, "--top-k 100000", "vocabulary")


def test_unwritable_out_dir(student, tmp_path):
    _write(tmp_path / "file.txt", "x")
    run = compare(student, student, out=tmp_path / "file.txt" / "sub", extra=TINIEST)
    assert_error(run, "--out", "file.txt")


@pytest.mark.parametrize("args", [["compare", "--out", "x"], ["compare", "a", "b", "--no-such-flag"], ["nonsense"]])
def test_usage_errors_are_exit_2_not_a_crash(args):
    run = cli(*args)
    assert run.code == 2, run.err
    assert "internal error" not in run.err and "Traceback" not in run.err
    assert "Usage" in run.err or "Error" in run.err, run.err


def test_zero_samples(student, tmp_path):
    run = compare(student, student, out=tmp_path / "o", extra=["--samples", "0", "--quiet"])
    assert_error(run, "--samples")


def test_report_on_a_missing_dir(tmp_path):
    assert_error(cli("report", tmp_path / "nothing-here"), "no results.json")


def test_report_on_an_unfinished_run_says_resume(base_copy):
    (base_copy / "results.json").unlink()
    assert_error(cli("report", base_copy), "no results.json", "--resume")


def test_report_on_a_corrupt_results_file(base_copy):
    (base_copy / "results.json").write_text('{"schema_version": 1, "pairs": [')
    assert_error(cli("report", base_copy), "not a valid opd-probe results file")


# ------------------------------------------------------------------------------------------------ 7. crashes
@pytest.fixture
def boom(monkeypatch):
    from opd_probe.backends.hf import HFModel

    def score(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(HFModel, "score", score)


def test_unexpected_crash_is_exit_2(boom, student, tmp_path):
    run = compare(student, student, out=tmp_path / "o", extra=TINIEST)
    assert_error(run, "internal error", "RuntimeError: boom", "--debug")


def test_unexpected_crash_with_debug_shows_the_traceback(boom, student, tmp_path):
    run = cli("--debug", "compare", student, student, "--out", tmp_path / "o", "--prompts", TINY_PROMPTS, *TINIEST)
    assert run.code == 2
    assert "Traceback" in run.err and "RuntimeError: boom" in run.err


def test_ctrl_c_is_exit_2_and_mentions_resume(student, tmp_path, monkeypatch):
    from opd_probe.backends.hf import HFModel

    def generate(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(HFModel, "generate", generate)
    run = compare(student, student, out=tmp_path / "o", extra=TINIEST)
    assert run.code == 2
    assert "--resume" in run.err and "Traceback" not in run.err


# ------------------------------------------------------------------------------------------------ 8. defaults, config files
@pytest.fixture
def captured(monkeypatch, tmp_path):
    """Run compare / select-prompts up to their config: the orchestrator is replaced by one that records it.
    The working directory has no pyproject.toml, so only --config files are read."""
    import opd_probe.cli
    import opd_probe.report.markdown
    import opd_probe.run.select

    seen = {}

    def run_and_print(cfg, **kwargs):
        seen.update(cfg=cfg, **kwargs)
        return 0

    def run_select(cfg, progress):
        seen["cfg"] = cfg
        Path(cfg.work).mkdir(parents=True)  # the CLI writes the document's summary.md there
        return {}

    monkeypatch.setattr(opd_probe.cli, "_run_and_print", run_and_print)
    monkeypatch.setattr(opd_probe.run.select, "run_select", run_select)
    monkeypatch.setattr(opd_probe.report.markdown, "selection_markdown", lambda doc: "")
    monkeypatch.chdir(tmp_path)
    return seen


def test_compare_defaults_are_probe_config_defaults(captured):
    from opd_probe.config import ProbeConfig
    from opd_probe.thresholds import Thresholds

    run = cli("compare", "S", "T", "--out", "o")
    assert run.code == 0, run.err
    assert captured["cfg"] == ProbeConfig(student="S", teachers=("T",), out="o")
    assert captured["thresholds"] == Thresholds() and captured["fail_on"] == ()


def test_select_prompts_defaults_are_select_config_defaults(captured):
    from opd_probe.run.select import SelectConfig

    run = cli("select-prompts", "S", "T", "--pool", "p.jsonl", "--keep", "3", "--out", "k.jsonl", "--json", "-q")
    assert run.code == 0, run.err
    assert captured["cfg"] == SelectConfig(student="S", teacher="T", pool="p.jsonl", out="k.jsonl", keep=3)


def test_config_file_values_are_used_and_typed_flags_win(captured, tmp_path):
    cfg = tmp_path / "opd.toml"
    cfg.write_text('[tool.opd-probe]\nsamples = 1\nlimit = 2\ntop_k = 8\ncontinuation_depths = [0, 64]\n'
                   'template = ["student", "teacher"]\nchat_template = false\nfail_on = ["no-go", "caution"]\n'
                   '[tool.opd-probe.thresholds]\nunsupported_nogo = 0.7\n')
    # --top-k 16 is the default value, typed: a flag on the command line beats the file even then
    run = cli("compare", "S", "T", "--out", "o", "--config", cfg, "--samples", "3", "--top-k", "16", "--gate")
    assert run.code == 0, run.err
    got = captured["cfg"]
    assert (got.samples, got.top_k) == (3, 16)  # flags over the file
    assert got.limit == 2 and got.continuation_depths == (0, 64) and got.template == ("student", "teacher")
    assert got.chat_template is False  # the file sets the field; the flag is --no-chat-template
    assert captured["thresholds"].unsupported_nogo == 0.7
    assert captured["fail_on"] == ("no-go", "caution")  # the file's gate statuses, used with --gate


def test_a_standalone_config_file_and_pyproject(captured, tmp_path):
    (tmp_path / "opd.toml").write_text("max_new_tokens = 7\n")  # a standalone file: keys at top level
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.opd-probe]\nmax_new_tokens = 9\n')
    assert cli("compare", "S", "T", "--out", "o", "--config", tmp_path / "opd.toml").code == 0
    assert captured["cfg"].max_new_tokens == 7  # --config replaces ./pyproject.toml, it is not merged with it
    assert cli("compare", "S", "T", "--out", "o").code == 0
    assert captured["cfg"].max_new_tokens == 9


@pytest.mark.parametrize("text,needles", [
    ("[tool.opd-probe]\nsampels = 1\n", ["opd.toml: unknown opd-probe config key(s): sampels", "fix: allowed keys:",
                                          "samples"]),
    ("[tool.opd-probe]\nout = 'x'\n", ["opd.toml: unknown opd-probe config key(s): out"]),
    ("[tool.opd-probe]\nfail_on = 3\n", ["opd.toml: fail_on must be a status", "fix: e.g. fail_on"]),
    ('[tool.opd-probe]\nfail_on = ["maybe"]\n', ["unknown status maybe", "no-go and/or caution"]),
    ("[tool.opd-probe]\nsamples = 0\n", ["--samples must be at least 1"]),  # checked by ProbeConfig, as a flag is
])
def test_bad_config_file_values_exit_2_with_the_fix(captured, tmp_path, text, needles):
    cfg = tmp_path / "opd.toml"
    cfg.write_text(text)
    assert_error(cli("compare", "S", "T", "--out", "o", "--config", cfg), *needles)
    assert "cfg" not in captured


# ------------------------------------------------------------------------------------------------ 9. help, version
@pytest.mark.parametrize("args", [["--help"], ["compare", "--help"], ["select-prompts", "--help"], ["report", "--help"],
                                  ["demo", "--help"], ["verify", "--help"]])
def test_help_exits_0(args):
    run = cli(*args)
    assert run.code == 0, run.err
    assert "Usage" in run.out


def _python(code_or_args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=120)


@pytest.mark.parametrize("args", [["--help"], ["compare", "--help"]])
def test_help_does_not_import_torch(args):
    code = (
        "import sys\n"
        "from opd_probe.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as e:\n"
        "    print('EXIT', e.code)\n"
        "print('TORCH', 'torch' in sys.modules)\n"
        "print('VLLM', 'vllm' in sys.modules)\n"
    )
    proc = _python(["-c", code])
    assert proc.returncode == 0, proc.stderr
    assert "EXIT 0" in proc.stdout
    assert "TORCH False" in proc.stdout
    assert "VLLM False" in proc.stdout


def test_version():
    from opd_probe import __version__

    proc = _python(["-m", "opd_probe", "--version"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"opd-probe {__version__}"


def test_every_compare_and_verify_flag_is_a_setting_or_named_as_cli_only():
    """compare's and verify's flag values become their configs by name (config.probe_values,
    VerifyConfig.from_flags): a new flag must be a config field or listed as CLI-only, else the command breaks."""
    from dataclasses import fields

    import typer

    from opd_probe.cli import app
    from opd_probe.config import ProbeConfig, probe_values
    from opd_probe.run.verify import VerifyConfig

    commands = typer.main.get_command(app).commands
    flags = {p.name: p.default for p in commands["compare"].params} | {"student": "s", "teachers": ["t"], "out": "o"}
    values = probe_values(flags)
    assert set(values) <= {f.name for f in fields(ProbeConfig)}
    assert ProbeConfig(**values).to_dict() == ProbeConfig(student="s", teachers=("t",), out="o").to_dict()
    flags = {p.name: p.default for p in commands["verify"].params} | {"student": "s", "teacher": "t"}
    cfg = VerifyConfig.from_flags(flags | {"prompts": Path("p.jsonl")})
    assert cfg == VerifyConfig(student="s", teacher="t", out="", prompts="p.jsonl")
