"""A teacher served over HTTP (served.py, backends/served.py, docs/endpoint.md): the pure parts by hand, then
compare and check against a real transformers model behind a loopback server (served_stub.py) with the failures a
real server shows. The same checks against `vllm serve` are in test_vllm.py."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest

from clirun import cli
from opd_probe import served
from opd_probe.served import ServedFacts, parse_endpoint, serving_findings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
TINY_PROMPTS = REPO / "sample_prompts" / "tiny.jsonl"
RUN = ["--prompts", TINY_PROMPTS, "--limit", "3", "--samples", "2", "--max-new-tokens", "6", "--quiet"]
NAME = "org/tiny-teacher"


# ------------------------------------------------------------------------------------------------ pure
@pytest.mark.parametrize("path, base, model", [
    ("http://localhost:8000/v1#Qwen/Qwen3-8B", "http://localhost:8000/v1", "Qwen/Qwen3-8B"),
    ("http://localhost:8000#m", "http://localhost:8000/v1", "m"),
    ("https://h.example/v1/", "https://h.example/v1", None),
])
def test_endpoint_names_the_api_root_and_the_model(path, base, model):
    e = parse_endpoint(path)
    assert (e.base, e.model) == (base, model)


@pytest.mark.parametrize("path, why", [
    ("http://user:key@h:8000/v1#m", "credentials"),
    ("http://h:8000/v1?key=1#m", "query"),
    ("http:///v1#m", "host"),
])
def test_endpoint_refuses_what_would_leak_or_cannot_be_reached(path, why):
    with pytest.raises(ValueError, match=why):
        parse_endpoint(path)


def test_a_key_in_the_url_exits_2_naming_the_environment_variable(student, tmp_path):
    run = cli("compare", student, "http://user:sekrit@127.0.0.1:9/v1#m", *RUN, "--out", tmp_path / "o")
    assert run.code == 2 and "OPD_PROBE_API_KEY" in run.err and "credentials" in run.err, run.err


def test_logprob_cap_is_read_from_vllms_refusal():
    msg = "Requested prompt logprobs of 64, which is greater than max allowed: 20"
    assert served.logprob_cap_from_error(msg) == 20
    assert served.logprob_cap_from_error("model not found") is None


def test_backoff_doubles_to_its_cap_and_retry_after_wins():
    assert served.backoff_delays(5, base=0.5, cap=4.0) == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert served.retry_after_seconds("3", 0.5) == 3.0
    assert served.retry_after_seconds(None, 0.5) == 0.5
    assert served.retry_after_seconds("Wed, 21 Oct 2026 07:28:00 GMT", 0.5) == 0.5
    assert served.retryable(429) and served.retryable(503) and served.retryable(None)
    assert not served.retryable(400) and not served.retryable(401) and not served.retryable(404)


def test_prompt_logprob_rows_become_arrays_by_rank():
    """Two positions, K' = 2: the actual token's entry gives the sampled log-prob even outside the top-2; the top
    entries come out in rank order whatever the JSON order."""
    rows = [
        None,
        {"7": {"logprob": -2.5, "rank": 2}, "5": {"logprob": -0.1, "rank": 1}},
        {"3": {"logprob": -0.3, "rank": 1}, "5": {"logprob": -1.6, "rank": 2}, "9": {"logprob": -4.0, "rank": 7}},
    ]
    actual, ids, lps = served.json_position_arrays(rows, 1, 2, 2, [7, 9])
    assert actual.tolist() == pytest.approx([-2.5, -4.0])
    assert ids.tolist() == [[5, 7], [3, 5]]
    assert np.allclose(lps, [[-0.1, -2.5], [-0.3, -1.6]])
    with pytest.raises(ValueError, match="expected 3"):
        served.json_position_arrays(rows, 1, 2, 3, [7, 9])


def test_top_mass_excess_by_hand():
    half = math.log(0.5)
    assert served.top_mass_excess([[half, half]]) == pytest.approx(0.0)
    assert served.top_mass_excess([[half, math.log(0.25)]]) == pytest.approx(-0.25)
    assert served.top_mass_excess([[math.log(0.9), math.log(0.3)]]) == pytest.approx(0.2)


def _facts(**kw):
    base = dict(label="http://h/v1#m", listed=("m",), model="m", texts_checked=3, tokenize_endpoint=True,
                logprobs_cap=64)
    return ServedFacts(**{**base, **kw})


@pytest.mark.parametrize("kw, level, code, fix", [
    (dict(problem="not reachable"), "error", "served", "vllm serve"),
    (dict(model=None, listed=("a", "b")), "error", "served-model", "#a"),
    (dict(token_mismatch="Hello"), "error", "served-tokens", "--teacher-tokenizer"),
    (dict(tokenize_endpoint=False, texts_checked=0), "warn", "served-tokens", "/tokenize"),
    (dict(logprobs_missing=True), "error", "served-logprobs", "vLLM or SGLang"),
    (dict(logprobs_cap=8), "error", "served-logprobs", "--max-logprobs 64"),
    (dict(logprobs_cap=20), "warn", "served-logprobs", "--max-logprobs 64"),
    (dict(mass_excess=0.2), "error", "served-raw", "raw_logprobs"),
    (dict(temperature_shift=0.5), "error", "served-raw", "raw_logprobs"),
    (dict(repeat_diff=0.01), "warn", "served-determinism", "--no-enable-prefix-caching"),
])
def test_each_serving_failure_names_its_fix(kw, level, code, fix):
    found = serving_findings(_facts(**kw), k=16, kprime=64)
    hit = [f for f in found if f.code == code and f.level == level]
    assert hit and fix in (hit[0].fix or ""), found


def test_a_healthy_server_gives_no_warning():
    found = serving_findings(_facts(), k=16, kprime=64)
    assert {f.level for f in found} == {"ok"}
    assert {f.code for f in found} == {"served", "served-tokens", "served-logprobs", "served-determinism"}


# ------------------------------------------------------------------------------------------------ the stub server
@pytest.fixture(scope="module")
def student(tiny_model) -> Path:
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def teacher(tiny_model) -> Path:
    return tiny_model(seed=1)


@pytest.fixture(scope="module")
def server(teacher):
    from served_stub import StubTeacher, serve

    stub = StubTeacher(teacher, name=NAME)
    httpd, url = serve(stub)
    stub.url = url
    yield stub
    httpd.shutdown()


@pytest.fixture
def stub(server):
    server.reset()
    yield server
    server.reset()


def _pairs(out: Path) -> dict:
    return {p["teacher"]: p for p in json.loads((out / "results.json").read_text())["pairs"]}


def test_served_teacher_gives_the_local_scorers_exact_metrics(student, teacher, stub, tmp_path, monkeypatch):
    """The same model in-process and behind the server, on the same rollouts: every metric built on exact values
    agrees to 1e-4; the entropies are flagged approximate (top-K' bound), as with the vLLM backend. The API key
    goes to the server and nowhere into the outputs."""
    monkeypatch.setenv("OPD_PROBE_API_KEY", "sekrit-key-123")
    served_name = f"{stub.url}#{NAME}"
    run = cli("compare", student, teacher, served_name, *RUN, "--out", tmp_path / "r", "--exit-zero")
    assert run.code == 0, run.err
    pairs = _pairs(tmp_path / "r")
    local, remote = pairs[str(teacher)], pairs[served_name]
    for m in ("overlap_ratio", "overlap_mass_student", "overlap_mass_teacher", "sampled_reverse_kl",
              "top1_agreement"):
        assert remote["pooled"][m]["mean"] == pytest.approx(local["pooled"][m]["mean"], abs=1e-4), m
    assert "entropy_gap" in remote["approximate"] and "entropy_gap" not in local["approximate"]
    assert remote["pooled"]["teacher_entropy"]["mean"] <= local["pooled"]["teacher_entropy"]["mean"] + 1e-4
    assert remote["model"]["backend"] == "served" and remote["model"]["served_model"] == NAME
    assert remote["model"]["requests_retried"] == 0
    assert any(h.get("Authorization") == "Bearer sekrit-key-123" for h in stub.headers)
    for f in (tmp_path / "r").rglob("*"):
        if f.is_file():
            assert b"sekrit-key-123" not in f.read_bytes(), f


def test_check_runs_the_serving_preflight(student, stub):
    run = cli("check", student, f"{stub.url}#{NAME}", "--prompts", TINY_PROMPTS, "--limit", "3", "--json")
    found = [json.loads(line) for line in run.out.splitlines()]
    codes = {f["code"]: f["level"] for f in found if f["teacher"]}
    assert codes["served"] == "ok" and codes["served-tokens"] == "ok" and codes["served-logprobs"] == "ok"
    assert codes["served-determinism"] == "ok" and codes["vocab"] == "ok"
    assert run.code == 0, found


@pytest.mark.parametrize("setup, code, text", [
    (dict(max_logprobs=8), "served-logprobs", "--max-logprobs"),
    (dict(processed=True), "served-raw", "raw_logprobs"),
    (dict(tokenize_offset=1), "served-tokens", "--teacher-tokenizer"),
    (dict(prompt_logprobs=False), "served-logprobs", "vLLM or SGLang"),
])
def test_check_exits_2_naming_the_servers_fix(student, stub, setup, code, text):
    for k, v in setup.items():
        setattr(stub, k, v)
    run = cli("check", student, f"{stub.url}#{NAME}", "--prompts", TINY_PROMPTS, "--limit", "2", "--top-k", "16",
              "--json")
    found = [json.loads(line) for line in run.out.splitlines()]
    hit = [f for f in found if f["code"] == code and f["level"] == "error"]
    assert run.code == 2 and hit and text in hit[0]["fix"], found
    stub.max_logprobs = 64


def test_check_warns_when_repeated_requests_differ_or_tokens_cannot_be_checked(student, stub):
    stub.noise, stub.tokenize = 0.05, False
    run = cli("check", student, f"{stub.url}#{NAME}", "--prompts", TINY_PROMPTS, "--limit", "2", "--json")
    found = {f["code"]: f for f in map(json.loads, run.out.splitlines()) if f["teacher"]}
    assert run.code == 1
    assert found["served-determinism"]["level"] == "warn" and found["served-tokens"]["level"] == "warn"


def test_a_wrong_model_name_or_a_dead_server_exits_2_before_sampling(student, stub, tmp_path):
    wrong = cli("compare", student, f"{stub.url}#nope", *RUN, "--out", tmp_path / "w")
    assert wrong.code == 2 and NAME in wrong.err and "#" in wrong.err
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = cli("compare", student, f"http://127.0.0.1:{port}/v1#m", *RUN, "--out", tmp_path / "d")
    assert dead.code == 2 and "not reachable" in dead.err and "vllm serve" in dead.err
    assert not (tmp_path / "w" / "rollouts.parquet").exists() and not (tmp_path / "d" / "rollouts.parquet").exists()


def test_client_retries_429_5xx_and_truncated_answers_then_gives_up_with_the_reason(stub):
    from opd_probe.backends.served import Client, ServedError

    client = Client(parse_endpoint(f"{stub.url}#{NAME}"), timeout=10, retries=4, sleep=lambda s: None)
    body = {"model": NAME, "prompt": [1, 2, 3], "max_tokens": 1, "prompt_logprobs": 2}
    stub.fail, stub.truncate = [429, 503], 1
    assert client.call("/completions", body)["choices"][0]["prompt_logprobs"][0] is None
    assert client.retried == 3
    stub.truncate = 99
    with pytest.raises(ServedError, match="not valid JSON") as e:
        client.call("/completions", body)
    assert "5 tries" in e.value.message
    stub.truncate = 0
    with pytest.raises(ServedError, match="HTTP 400"):  # no retry can change a refused request
        client.call("/completions", {**body, "prompt_logprobs": 999})


def test_client_times_out_a_slow_server(stub):
    from opd_probe.backends.served import Client, ServedError

    stub.delay = 1.0
    client = Client(parse_endpoint(f"{stub.url}#{NAME}"), timeout=0.2, retries=1, sleep=lambda s: None)
    with pytest.raises(ServedError, match="no answer after 2 tries.*timed out"):
        client.call("/completions", {"model": NAME, "prompt": [1, 2], "max_tokens": 1, "prompt_logprobs": 2})


def test_a_server_lost_mid_run_loses_no_saved_part_and_resume_finishes(student, stub, tmp_path, monkeypatch):
    """Score parts of 2 rollouts: the server stops answering after the first parts; the run exits 2 naming
    --resume, which sends only the missing requests and gives the uninterrupted run's numbers."""
    from opd_probe.run import stages

    monkeypatch.setattr(stages, "PART_ROLLOUTS", 2)
    served_name = f"{stub.url}#{NAME}"
    full = cli("compare", student, served_name, *RUN, "--out", tmp_path / "full", "--exit-zero")
    assert full.code == 0, full.err
    n_full = stub.n_completions
    stub.reset()
    stub.fail_after = n_full - 3
    cut = cli("compare", student, served_name, *RUN, "--out", tmp_path / "cut", "--exit-zero",
              "--request-timeout", "5")
    assert cut.code == 2 and "--resume" in cut.err, cut.err
    saved = list((tmp_path / "cut").rglob("*part*"))
    assert saved, "no score part was kept"
    stub.reset()
    # a flaky restart: two scoring requests (after the preflight's 3 and the load's 1) fail once, are retried, and
    # results.json counts the retries
    stub.fail_at = {6: 503, 7: 429}
    resumed = cli("compare", student, served_name, *RUN, "--out", tmp_path / "cut", "--resume", "--exit-zero")
    assert resumed.code == 0, resumed.err
    assert stub.n_completions - 2 < n_full
    assert _pairs(tmp_path / "cut")[served_name]["model"]["requests_retried"] >= 1
    a, b = _pairs(tmp_path / "full")[served_name], _pairs(tmp_path / "cut")[served_name]
    for m in ("overlap_ratio", "sampled_reverse_kl", "entropy_gap"):
        assert b["pooled"][m]["mean"] == pytest.approx(a["pooled"][m]["mean"], abs=1e-6)


@pytest.mark.parametrize("args, text", [
    (["verify", "{s}", "{u}", "--prompts", TINY_PROMPTS, "--out", "{o}"], "verify"),
    (["select-prompts", "{s}", "{u}", "--pool", TINY_PROMPTS, "--keep", "2", "--out", "{o}/k.jsonl", "--rank-by",
      "kl"], "--rank-by mass"),
    (["compare", "{s}", "{u}", *RUN, "--out", "{o}", "--alignment", "text"], "student's ids"),
    (["compare", "{u}", "{s}", *RUN, "--out", "{o}"], "only a teacher can be served"),
])
def test_what_a_served_teacher_cannot_do_yet_exits_2(student, stub, tmp_path, args, text):
    fill = {"s": str(student), "u": f"{stub.url}#{NAME}", "o": str(tmp_path / "o")}
    run = cli(*[str(a).format(**fill) for a in args])
    assert run.code == 2 and text in run.err, run.err


def test_select_prompts_keeps_what_the_local_teacher_keeps(student, teacher, stub, tmp_path):
    """select-prompts ranks by overlap mass, exact from a served teacher: the same kept prompts as the same
    checkpoint loaded here."""
    base = ["--pool", TINY_PROMPTS, "--keep", "4", "--probe-samples", "2", "--max-new-tokens", "6", "--quiet"]
    kept = {}
    for name, t in (("local", teacher), ("served", f"{stub.url}#{NAME}")):
        run = cli("select-prompts", student, t, *base, "--out", tmp_path / f"{name}.jsonl")
        assert run.code == 0, run.err
        kept[name] = [json.loads(line)["id"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert kept["served"] == kept["local"] and len(kept["local"]) == 4


def test_a_local_tokenizer_the_server_does_not_use_exits_2(student, stub, tmp_path):
    import tiny_models

    tok = tiny_models.build_tokenizer(tmp_path / "tok-other", variant="other")
    run = cli("compare", student, f"{stub.url}#{NAME}", *RUN, "--out", tmp_path / "o", "--teacher-tokenizer", tok)
    assert run.code == 2 and "splits" in run.err and "--teacher-tokenizer" in run.err, run.err


def test_a_served_teacher_with_another_token_map_than_the_students_exits_2(student, tiny_model, tmp_path):
    """The server and --teacher-tokenizer agree, but the map is not the student's: a served teacher is scored on
    the student's ids, so this pair needs the teacher's weights locally (text alignment)."""
    import tiny_models
    from served_stub import StubTeacher, serve

    tok = tiny_models.build_tokenizer(tmp_path / "tok-other", variant="other")
    other = tiny_model(seed=2, tokenizer_dir=tok)
    httpd, url = serve(StubTeacher(other, name="other"))
    try:
        run = cli("compare", student, f"{url}#other", *RUN, "--out", tmp_path / "o", "--teacher-tokenizer", other)
    finally:
        httpd.shutdown()
    assert run.code == 2 and "student's ids" in run.err and "locally" in run.err, run.err


def test_served_scores_of_one_rollout_match_the_in_process_scorer(student, teacher, stub):
    """Backend level: top-k ids and log-probs, sampled-token log-probs exact; entropy a lower bound."""
    from opd_probe.backends import load_backend_model
    from opd_probe.backends.base import ModelSpec

    local = load_backend_model("hf", ModelSpec(path=str(teacher), device="cpu", dtype="float32"), "teacher")
    remote = load_backend_model("hf", ModelSpec(path=f"{stub.url}#{NAME}", served_tokenizer=str(student), top_k=4,
                                                vllm_logprobs=8), "teacher")
    prompt, response = [1, 5, 9, 11], [20, 30, 40, 50, 60]
    a = local.score([prompt], [response], 4)[0]
    b = remote.score([prompt], [response], 4)[0]
    assert np.array_equal(a.topk_ids_LK, b.topk_ids_LK)
    assert np.allclose(a.topk_logprobs_LK, b.topk_logprobs_LK, atol=1e-4)
    assert np.allclose(a.sampled_logprob_L, b.sampled_logprob_L, atol=1e-4)
    assert (b.entropy_L <= a.entropy_L + 1e-4).all() and not b.entropy_exact_L.any()


def test_reports_name_a_served_teacher_by_its_model():
    from opd_probe.report.view import short_names

    assert short_names(["http://h:8000/v1#org/m", "/x/ckpt/teacher"]) == {"http://h:8000/v1#org/m": "served:org/m",
                                                                          "/x/ckpt/teacher": "teacher"}
