"""The bad-input catalogue (docs/errors.md): every case exits 2 with one line naming the problem ("error: ...") and
one naming the fix ("fix: ..."), and no traceback unless --debug. Tiny models, one prompt, two tokens: each case
fails in a few seconds at most, most of them before any weight is loaded."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from clirun import assert_error, cli
from model_variants import variant

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
TINY_PROMPTS = REPO / "sample_prompts" / "tiny.jsonl"
TINIEST = ["--samples", "1", "--max-new-tokens", "2", "--limit", "1", "--quiet"]
SMALL = ["--samples", "1", "--max-new-tokens", "4", "--limit", "2", "--quiet"]


@pytest.fixture(scope="module")
def student(tiny_model) -> Path:
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def bad(student, tmp_path_factory):
    """name -> a model folder with one thing broken."""
    root = tmp_path_factory.mktemp("bad-models")
    v = lambda name, **kw: variant(student, root / name, **kw)  # noqa: E731
    return {
        "no-weights": v("no-weights", weights="missing"),
        "corrupt-weights": v("corrupt-weights", weights=b"\x00garbage, not a safetensors file" * 10),
        "truncated-weights": v("truncated-weights", weights="truncated"),
        "no-model-type": v("no-model-type", config={"model_type": None}),
        "remote-code": v("remote-code", config={"model_type": "my-own-arch",
                                                 "auto_map": {"AutoModelForCausalLM": "modeling_mine.Mine"}}),
        "no-template": v("no-template", chat_template=""),
        "refuses-system": v("refuses-system", chat_template=(
            "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
            "{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|endoftext|>\n' }}{% endfor %}")),
    }


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def compare(student, *teachers, out, prompts=TINY_PROMPTS, extra=()):
    return cli("compare", student, *teachers, "--out", out, "--prompts", prompts, *TINIEST, *extra)


# ------------------------------------------------------------------------------------------------ models
@pytest.mark.parametrize("name, needles", [
    ("no-weights", ["no-weights"]),
    ("corrupt-weights", ["corrupt-weights"]),
    ("truncated-weights", ["truncated-weights"]),
    ("no-model-type", ["model_type"]),
    ("remote-code", ["--trust-remote-code"]),
])
def test_broken_teacher_folder(student, bad, tmp_path, name, needles):
    run = compare(student, bad[name], out=tmp_path / "o")
    assert_error(run, *needles)
    assert not (tmp_path / "o").exists()  # found by the preflight: nothing sampled, nothing written


def test_missing_config(student, bad, tmp_path):
    (bad["no-weights"].parent / "no-config").mkdir()
    run = compare(student, bad["no-weights"].parent / "no-config", out=tmp_path / "o")
    assert_error(run, "config.json")


def test_config_that_is_not_json(student, tmp_path):
    folder = variant(student, tmp_path / "bad-json")
    write(folder / "config.json", '{"model_type": "llama", ')
    assert_error(compare(student, folder, out=tmp_path / "o"), "config")


def test_student_without_a_chat_template_given_chat_prompts(student, bad, tmp_path):
    assert_error(compare(bad["no-template"], student, out=tmp_path / "o"), "no chat template", "--no-chat-template")


def test_template_that_refuses_the_prompts_messages(student, bad, tmp_path):
    prompts = write(tmp_path / "sys.jsonl", json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                                                     {"role": "user", "content": "Hi"}]}) + "\n")
    run = compare(bad["refuses-system"], student, out=tmp_path / "o", prompts=prompts)
    assert_error(run, "no system role")


def test_missing_model_folder(student, tmp_path):
    assert_error(compare(student, tmp_path / "nowhere", out=tmp_path / "o"), "does not exist")


@pytest.fixture(scope="module")
def other_map(student, tmp_path_factory) -> Path:
    """The student with another tokenizer of the same size: same 512 ids, other strings."""
    import tiny_models

    root = tmp_path_factory.mktemp("other-map")
    return variant(student, root / "model", tokenizer_from=tiny_models.build_tokenizer(root / "tok", variant="other"))


@pytest.mark.parametrize("command", ["verify", "select-prompts"])
def test_vocab_mismatch_stops_before_any_weight_loads(student, other_map, tmp_path, monkeypatch, command):
    """Same vocabulary size, another id map: exit 2 from the preflight, before a weight is loaded or a rollout
    sampled (issue 15: this took 45 s of sampling and scoring before). compare scores such a teacher through text
    alignment instead (tests/test_cross.py)."""
    from transformers import AutoModelForCausalLM

    def refuse(*a, **k):
        raise AssertionError("a weight was loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    out = tmp_path / "o"
    if command == "verify":
        run = cli("verify", student, other_map, "--prompts", TINY_PROMPTS, "--out", out, "--steps", "1", "--quiet")
    else:
        pool = write(tmp_path / "pool.jsonl", '{"prompt": "What is 2 + 3?"}\n{"prompt": "And 4 + 5?"}\n')
        run = cli("select-prompts", student, other_map, "--pool", pool, "--keep", "1", "--out", out / "kept.jsonl",
                  "--quiet")
    assert_error(run, "vocabularies differ at id", "differ, teacher has 512 tokens")
    assert not (out / "rollouts.jsonl").exists() and not out.exists()


def test_preflight_warnings_join_the_runs_warnings(student, tmp_path):
    from opd_probe.rundir import load_results

    instruct = variant(student, tmp_path / "instruct", generation_config={"eos_token_id": 4},
                       tokenizer_config={"eos_token": "<|system|>"}, chat_template=(
                           "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|system|>\n' }}"
                           "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"))
    run = compare(student, instruct, out=tmp_path / "o")
    assert run.code == 0, run.err  # a warning does not stop the run
    warnings = load_results(tmp_path / "o").warnings
    assert any(w.startswith("preflight: stop tokens disagree") for w in warnings), warnings


# ------------------------------------------------------------------------------------------------ prompts
@pytest.mark.parametrize("name, data, needles", [
    ("empty.jsonl", "", ["empty"]),
    ("latin1.jsonl", '{"prompt": "caf\xe9"}\n'.encode("latin-1"), ["UTF-8"]),
    ("dupes.jsonl", '{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', ["duplicate id 'a'", "line 2"]),
    ("torn.jsonl", '{"prompt": "x"}\n{"prompt": "y"\n', ["line 2", "invalid JSON"]),
    ("blank.jsonl", '{"prompt": "   "}\n', ["'prompt' is empty"]),
    ("prompts.txt", "hello\n", ["unknown prompt file extension"]),
])
def test_bad_prompt_file(student, tmp_path, name, data, needles):
    run = compare(student, student, out=tmp_path / "o", prompts=write(tmp_path / name, data))
    assert_error(run, *needles)
    assert not (tmp_path / "o").exists()  # nothing written


def test_missing_prompt_file(student, tmp_path):
    assert_error(compare(student, student, out=tmp_path / "o", prompts=tmp_path / "none.jsonl"), "not found")


def test_prompt_longer_than_the_context(student, tmp_path):
    prompts = write(tmp_path / "long.jsonl", json.dumps({"id": "long", "prompt": "apples " * 2000}) + "\n")
    assert_error(compare(student, student, out=tmp_path / "o", prompts=prompts), "'long'", "context of 512")


# ------------------------------------------------------------------------------------------------ flags
@pytest.mark.parametrize("extra, needles", [
    (["--top-k", "100000"], ["--top-k 100000", "vocabulary"]),
    (["--dtype", "float8"], ["unknown dtype 'float8'"]),
    (["--samples", "0"], ["--samples"]),
    (["--limit", "0"], ["--limit"]),
    (["--template", "both"], ["--template"]),
    (["--vllm-logprobs", "0"], ["--vllm-logprobs"]),
])
def test_bad_flag(student, tmp_path, extra, needles):
    assert_error(compare(student, student, out=tmp_path / "o", extra=extra), *needles)


def test_cuda_requested_on_a_cpu_machine(student, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert_error(compare(student, student, out=tmp_path / "o", extra=["--device", "cuda"]), "CUDA is not available")


def test_vllm_backend_without_vllm(student, tmp_path, monkeypatch):
    from opd_probe import backends

    monkeypatch.setattr(backends, "vllm_installed", lambda: False)
    assert_error(compare(student, student, out=tmp_path / "o", extra=["--backend", "vllm"]), "vLLM")


def test_k_above_the_vllm_default_limit_is_a_warning_with_the_flag_to_raise():
    """vLLM's default max_logprobs (20) cannot hold k = 16 plus the student's ids: check says so (warn, exit 1)
    and names the flag; opd-probe's own engines are started with the limit raised (docs/vllm.md)."""
    from opd_probe import check
    from opd_probe.check import ModelFacts, Plan

    t = ModelFacts("T", "teacher", "T", {"vocab_size": 512}, {f"t{i}": i for i in range(512)}, {}, (0,), None, False,
                   "Fast", True, {}, 512)
    f = check.logprob_findings(t, Plan(backend="vllm", top_k=16, vllm_logprobs=20))[0]
    assert f.level == "warn" and "--max-logprobs 20" in f.message and "--vllm-logprobs to 32" in f.fix


def test_the_same_teacher_twice(student, tmp_path):
    assert_error(compare(student, student, student, out=tmp_path / "o"), "twice")


def test_unknown_check_template(student):
    assert_error(cli("check", student, student, "--template", "mine"), "--template")


# ------------------------------------------------------------------------------------------------ the out directory
def test_out_is_a_file(student, tmp_path):
    assert_error(compare(student, student, out=write(tmp_path / "file", "x")), "--out", "not a directory")


def test_out_not_writable(student, tmp_path, monkeypatch):
    # the tests run as root, for whom no directory is read-only: the refusal is simulated where it happens
    real = Path.mkdir

    def mkdir(self, *a, **k):
        if self.name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert_error(compare(student, student, out=tmp_path / "locked"), "cannot write", "Permission denied")


@pytest.fixture(scope="module")
def finished(student, tmp_path_factory):
    """A finished small compare run, to resume, damage and compare with."""
    from opd_probe.rundir import load_results

    out = tmp_path_factory.mktemp("finished") / "run"
    run = cli("compare", student, student, "--out", out, "--prompts", TINY_PROMPTS, *SMALL)
    assert run.code == 0, run.err
    return out, load_results(out)


def test_resume_with_changed_settings(student, finished, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    run = cli("compare", student, student, "--out", out, "--prompts", TINY_PROMPTS, *SMALL, "--resume",
              "--temperature", "0.5")
    assert_error(run, "--resume", "temperature")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_full_disk_while_writing_leaves_nothing_half_written_and_resumes(student, finished, tmp_path, monkeypatch):
    """The disk fills up as results.json is written: exit 2 naming the disk and --resume; no partial or temporary
    file; --resume then finishes from the saved rollouts and scores without computing anything again."""
    from opd_probe import rundir
    from opd_probe.rundir import load_results

    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def __getattr__(self, a):
            return getattr(self.f, a)

    def fdopen(fd, mode="r", *a, **k):
        f = real_fdopen(fd, mode, *a, **k)
        return Full(f) if ".results.json." in os.readlink(f"/proc/self/fd/{fd}") else f

    out = tmp_path / "run"
    monkeypatch.setattr(rundir.os, "fdopen", fdopen)
    run = cli("compare", student, student, "--out", out, "--prompts", TINY_PROMPTS, *SMALL)
    assert_error(run, "no space left", "--resume")
    assert not (out / "results.json").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    monkeypatch.setattr(rundir.os, "fdopen", real_fdopen)
    run = cli("compare", student, student, "--out", out, "--prompts", TINY_PROMPTS, *SMALL, "--resume")
    assert run.code == 0, run.err
    resumed, whole = load_results(out), finished[1]
    assert resumed.rollouts["sampled_tokens"] == 0 and resumed.pairs[0].timings["scored_states"] == 0
    assert resumed.pairs[0].pooled == whole.pairs[0].pooled


def test_interrupt_while_scoring_then_resume_loses_and_recomputes_nothing(student, finished, tmp_path, monkeypatch):
    from opd_probe.backends.hf import HFModel
    from opd_probe.rundir import load_results

    real_score = HFModel.score

    def score(self, prompt_ids, response_ids, k, query_ids_LQ=None):
        if query_ids_LQ is not None:  # the teacher's pass (the student's own has no query ids)
            raise KeyboardInterrupt
        return real_score(self, prompt_ids, response_ids, k, query_ids_LQ)

    out = tmp_path / "run"
    monkeypatch.setattr(HFModel, "score", score)
    run = cli("compare", student, student, "--out", out, "--prompts", TINY_PROMPTS, *SMALL)
    assert run.code == 2 and "--resume" in run.err and "Traceback" not in run.err, run.err
    saved = {p.name: p.read_bytes() for p in (out / "scores" / "student").iterdir()}
    monkeypatch.setattr(HFModel, "score", real_score)
    run = cli("compare", student, student, "--out", out, "--prompts", TINY_PROMPTS, *SMALL, "--resume")
    assert run.code == 0, run.err
    resumed = load_results(out)
    assert resumed.rollouts["sampled_tokens"] == 0 and resumed.rollouts["student_scored_states"] == 0
    assert {p.name: p.read_bytes() for p in (out / "scores" / "student").iterdir()} == saved
    assert resumed.pairs[0].pooled == finished[1].pairs[0].pooled


def test_debug_shows_the_traceback(student, tmp_path):
    run = cli("--debug", "compare", student, tmp_path / "nowhere", "--out", tmp_path / "o", "--prompts",
              TINY_PROMPTS, *TINIEST)
    assert run.code == 2 and "Traceback" in run.err and "error: " in run.err


def test_every_row_of_docs_errors_names_a_test_that_exists():
    import re

    doc = (REPO / "docs" / "errors.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| `") or line.startswith("| check")]
    assert len(rows) >= 30, len(rows)
    sources = {p.name: p.read_text() for p in (REPO / "tests").glob("test_*.py")}
    for row in rows:
        names = re.findall(r"`(?:(test_\w+\.py)::)?(test_\w+)(?:\[[^\]]*\])?`", row.split("|")[-2])
        assert names, row
        for file, name in names:
            assert f"def {name}(" in sources[file or "test_errors.py"], (file, name)
