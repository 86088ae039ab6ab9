"""`opd-probe select-prompts` end to end on tiny models (issue 8): the kept file, exact OOD share, determinism,
resume without rescoring, re-selection from saved scores, and bad pools (exit 2 with the line number).

One scored pool (12 prompts, one of them too long for the models' 512-token context) is made once per module;
re-selections from its saved scores (--resume with another --keep / --ood-fraction) load no model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from clirun import Run, assert_error, cli

from opd_probe import selection

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["--probe-samples", "2", "--max-new-tokens", "4", "--chunk-prompts", "4", "--quiet"]
LONG_LINE = 7  # the too-long prompt's line number (1-based)


def write_pool(path: Path, n: int = 12) -> Path:
    lines = []
    for i in range(n):
        if i == LONG_LINE - 1:
            rec = {"id": f"q{i}", "prompt": "count " * 600, "source": "long"}
        else:
            rec = {"source": "pool", "id": f"q{i}", "prompt": f"Tom has {i} apples and gets {i + 3} more. How many?",
                   "answer": str(2 * i + 3), "meta": {"n": i, "tags": ["a", "b"]}}
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")  # a blank line is skipped
    return path


def select(student, teacher, pool, out, *extra) -> Run:
    return cli("select-prompts", student, teacher, "--pool", pool, "--out", out, *FAST, *extra)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]



@pytest.fixture(scope="module")
def student(tiny_model) -> Path:
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def teacher(tiny_model, student) -> Path:
    return tiny_model(seed=3, init_from=student, perturb=0.3)


@pytest.fixture(scope="module")
def base(tmp_path_factory, student, teacher):
    d = tmp_path_factory.mktemp("select")
    pool = write_pool(d / "pool.jsonl")
    run = select(student, teacher, pool, d / "train.jsonl", "--keep", "8", "--ood-fraction", "0.25")
    assert run.code == 0, run.err
    return run, d, pool


# ------------------------------------------------------------------------------------------------ the selection
def test_kept_file_keeps_user_fields_and_adds_scores(base):
    run, d, _ = base
    kept = read_jsonl(d / "train.jsonl")
    assert len(kept) == 8
    assert [r["id"] for r in kept] == sorted((r["id"] for r in kept), key=lambda i: int(i[1:]))  # pool order
    for r in kept:
        assert list(r)[:3] == ["source", "id", "prompt"] and r["meta"] == {"n": int(r["id"][1:]), "tags": ["a", "b"]}
        s = r["opd_probe"]
        assert s["group"] in ("aligned", "ood") and s["rank_by"] == "mass" and s["n_states"] > 0
        assert set(selection.SCORE_METRICS) <= set(s)
    # 8 x 0.25 = 2 out-of-distribution, 6 aligned, and the aligned are the 6 best by student overlap mass
    assert [r["opd_probe"]["group"] for r in kept].count("ood") == 2
    assert sorted(r["opd_probe"]["rank"] for r in kept if r["opd_probe"]["group"] == "aligned") == list(range(1, 7))
    assert all(r["opd_probe"]["rank"] > 6 for r in kept if r["opd_probe"]["group"] == "ood")
    assert "kept minus pool" in run.out and "out-of-distribution" in run.out


def test_too_long_prompt_is_skipped_and_said(base):
    run, d, _ = base
    scores = read_jsonl(d / "train.select" / "scores.jsonl")
    assert len(scores) == 12
    long = [s for s in scores if s["line"] == LONG_LINE + 1]  # +1: the blank line after line 3
    assert len(long) == 1 and "exceed the models' context of 512" in long[0]["skipped"]
    doc = json.loads((d / "train.select" / "selection.json").read_text())
    assert doc["pool"]["count"] == 12 and doc["pool"]["scored"] == 11 and doc["pool"]["skipped"] == 1
    assert "1 pool prompt(s) were not scored" in run.err


def test_summary_says_how_kept_differs_from_pool(base):
    _, d, _ = base
    doc = json.loads((d / "train.select" / "selection.json").read_text())
    scores = [s for s in read_jsonl(d / "train.select" / "scores.jsonl") if "skipped" not in s]
    pool_mass = sum(s["overlap_mass_student"] for s in scores) / len(scores)
    assert doc["summary"]["pool"]["overlap_mass_student"] == pytest.approx(pool_mass)
    kept = read_jsonl(d / "train.jsonl")
    kept_entropy = sum(r["opd_probe"]["student_entropy"] for r in kept) / len(kept)
    assert doc["summary"]["kept"]["student_entropy"] == pytest.approx(kept_entropy)
    assert doc["summary"]["aligned"]["prompts"] == 6 and doc["summary"]["ood"]["prompts"] == 2
    assert doc["summary"]["aligned"]["overlap_mass_student"] >= doc["summary"]["pool"]["overlap_mass_student"]
    tp = doc["throughput"]
    assert tp["sampling_tokens_per_second"] > 0 and tp["teacher_scoring_tokens_per_second"] > 0
    md = (d / "train.select" / "summary.md").read_text()
    assert "| kept | 8 |" in md and "out-of-distribution" in md


@pytest.fixture
def resel(base, tmp_path):
    """A copy of the scored work dir, for re-selections (--resume with selection-only changes)."""
    _, d, pool = base
    shutil.copytree(d / "train.select", tmp_path / "w")
    return tmp_path, pool


def _reselect(student, teacher, resel, *extra) -> Run:
    tmp, pool = resel
    return select(student, teacher, pool, tmp / "t.jsonl", "--work", tmp / "w", "--resume", *extra)


@pytest.mark.parametrize("keep,frac", [(11, 0.0), (11, 1.0), (5, 0.5), (7, 0.3)])
def test_ood_fraction_is_respected_exactly_and_rescoring_is_not_needed(student, teacher, resel, keep, frac,
                                                                       monkeypatch):
    from opd_probe.run import select as select_prompts

    monkeypatch.setattr(select_prompts, "score_chunk", lambda *a, **k: pytest.fail("rescored a finished pool"))
    run = _reselect(student, teacher, resel, "--keep", keep, "--ood-fraction", frac)
    assert run.code == 0, run.err
    groups = [r["opd_probe"]["group"] for r in read_jsonl(resel[0] / "t.jsonl")]
    assert (groups.count("aligned"), groups.count("ood")) == selection.split_counts(keep, frac)


def test_selection_is_deterministic_under_a_seed(base, student, teacher, resel):
    _, d, _ = base
    run = _reselect(student, teacher, resel, "--keep", "8", "--ood-fraction", "0.25")
    assert run.code == 0, run.err
    assert (resel[0] / "t.jsonl").read_bytes() == (d / "train.jsonl").read_bytes()


def test_keep_beyond_the_scorable_prompts_is_exit_2_and_resumable(student, teacher, resel):
    run = _reselect(student, teacher, resel, "--keep", "12")  # 12 in the pool, 11 scorable
    assert_error(run, "--keep 12 is more than the 11 pool prompts that could be scored", "--resume")
    assert _reselect(student, teacher, resel, "--keep", "11").code == 0


# ------------------------------------------------------------------------------------------------ resume
def test_interrupted_selection_resumes_without_rescoring(base, student, teacher, tmp_path, monkeypatch):
    from opd_probe.run import select as select_prompts

    _, d, pool = base
    real = select_prompts.score_chunk
    calls = []

    def interrupt_second(student_m, teacher_m, chunk, *a, **k):
        calls.append([r.index for r in chunk])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(student_m, teacher_m, chunk, *a, **k)

    monkeypatch.setattr(select_prompts, "score_chunk", interrupt_second)
    args = ("--keep", "8", "--ood-fraction", "0.25")
    run = select(student, teacher, pool, tmp_path / "train.jsonl", *args)
    assert run.code == 2 and "--resume" in run.err
    assert [s["index"] for s in read_jsonl(tmp_path / "train.select" / "scores.jsonl")] == [0, 1, 2, 3]
    assert not (tmp_path / "train.jsonl").exists()

    calls.clear()
    monkeypatch.setattr(select_prompts, "score_chunk", lambda s, t, chunk, *a, **k: (
        calls.append([r.index for r in chunk]), real(s, t, chunk, *a, **k))[1])
    run = select(student, teacher, pool, tmp_path / "train.jsonl", *args, "--resume")
    assert run.code == 0, run.err
    assert calls == [[4, 5, 6, 7], [8, 9, 10, 11]]  # the finished chunk was not scored again
    # ... and the resumed run gives the uninterrupted run's numbers and selection
    assert read_jsonl(tmp_path / "train.select" / "scores.jsonl") == read_jsonl(d / "train.select" / "scores.jsonl")
    assert (tmp_path / "train.jsonl").read_bytes() == (d / "train.jsonl").read_bytes()
    doc = json.loads((tmp_path / "train.select" / "selection.json").read_text())
    assert doc["pool"]["reused_scores"] == 4


def test_resume_with_other_sampling_settings_is_refused(student, teacher, resel):
    run = _reselect(student, teacher, resel, "--keep", "5", "--probe-samples", "3")
    assert_error(run, "probe_samples")


# ------------------------------------------------------------------------------------------------ bad input
BAD_POOLS = {
    "malformed": ('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c",\n', "line 3: invalid JSON"),
    "missing_field": ('{"prompt": "a"}\n{"text": "b"}\n', "line 2: record has neither 'prompt' nor 'messages'"),
    "not_object": ('{"prompt": "a"}\n["b"]\n', "line 2: record is a list"),
    "empty_prompt": ('{"prompt": "a"}\n\n{"prompt": "  "}\n', "line 3: 'prompt' is empty"),
    "empty": ("\n\n", "the pool is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_POOLS))
def test_bad_pool_is_exit_2_with_the_line(case, tmp_path):
    text, needle = BAD_POOLS[case]
    pool = tmp_path / "pool.jsonl"
    pool.write_text(text)
    # the pool is checked before any model loads: nonexistent model paths are never reached
    run = select(tmp_path / "no-student", tmp_path / "no-teacher", pool, tmp_path / "o.jsonl", "--keep", "1")
    assert_error(run, needle)
    assert not (tmp_path / "o.select").exists() and not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("args,needle", [
    (["--keep", "3"], "--keep 3 is larger than the pool (2 prompts"),
    (["--keep", "0"], "--keep must be at least 1"),
    (["--keep", "1", "--ood-fraction", "1.5"], "--ood-fraction must be in [0, 1]"),
    (["--keep", "1", "--ood-fraction", "-0.1"], "--ood-fraction must be in [0, 1]"),
    (["--keep", "1", "--rank-by", "vibes"], "--rank-by must be one of mass, overlap, kl"),
    (["--keep", "1", "--probe-samples", "0"], "--probe-samples must be at least 1"),
])
def test_bad_flags_are_exit_2(args, needle, tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    run = cli("select-prompts", tmp_path / "s", tmp_path / "t", "--pool", pool, "--out", tmp_path / "o.jsonl",
              "--quiet", *args)
    assert_error(run, needle)


def test_bad_paths_are_exit_2(tmp_path):
    pool = tmp_path / "pool.csv"
    pool.write_text("prompt\na\n")
    base = ["select-prompts", tmp_path / "s", tmp_path / "t", "--keep", "1", "--quiet"]
    assert_error(cli(*base, "--pool", pool, "--out", tmp_path / "o.jsonl"), "JSON Lines", ".csv")
    assert_error(cli(*base, "--pool", tmp_path / "nope.jsonl", "--out", tmp_path / "o.jsonl"), "pool file not found")
    jsonl = tmp_path / "pool.jsonl"
    jsonl.write_text('{"prompt": "a"}\n')
    assert_error(cli(*base, "--pool", jsonl, "--out", jsonl), "is the pool file itself")
    (tmp_path / "exists.jsonl").write_text("x\n")
    assert_error(cli(*base, "--pool", jsonl, "--out", tmp_path / "exists.jsonl"), "already exists", "--overwrite")
    assert (tmp_path / "exists.jsonl").read_text() == "x\n"


def test_help_lists_the_options():
    run = cli("select-prompts", "--help")
    assert run.code == 0
    for flag in ("--pool", "--keep", "--ood-fraction", "--probe-samples", "--rank-by", "--resume", "--work"):
        assert flag in run.out


def test_report_shows_a_selection(base, tmp_path):
    _, d, _ = base
    w = d / "train.select"
    con = cli("report", w)
    assert con.code == 0, con.err
    assert "kept minus pool" in con.out and "drawn at random from the rest" in con.out
    r = cli("report", w, "--html", tmp_path / "r.html", "--md", tmp_path / "r.md")
    assert r.code == 0, r.err
    page = (tmp_path / "r.html").read_text()
    assert "select-prompts run" in page and "Per-prompt alignment" in page and "data:image/png;base64," in page
    assert "| kept | 8 |" in (tmp_path / "r.md").read_text()
    assert json.loads(cli("report", w, "--json").out)["kind"] == "select"
