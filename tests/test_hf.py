"""backends/hf.py: the chunked scorer against the model's own full logits, per architecture; sampling edge cases."""

import numpy as np
import pytest
import torch

from opd_probe.backends import hf
from opd_probe.backends.base import ModelSpec, SamplingSettings
from opd_probe.errors import ModelLoadError


def load(path, **kw):
    return hf.HFModel.load(ModelSpec(path=str(path), device="cpu", dtype="float32", **kw), role="student")


def reference(model: hf.HFModel, prompt, response, k, query=None):
    """Full-vocabulary statistics from the model's own forward over the whole sequence."""
    ids = torch.tensor([list(prompt) + list(response)])
    with torch.no_grad():
        logits = model.model(input_ids=ids).logits[0, :, : model.vocab_size].float()
    logp = torch.log_softmax(logits, -1)[len(prompt) - 1 : len(prompt) + len(response) - 1]
    ent = -(logp.exp() * logp).sum(-1)
    top = logp.topk(k, -1)
    tgt = logp.gather(-1, torch.tensor(response)[:, None])[:, 0]
    q = logp.gather(-1, torch.from_numpy(np.asarray(query, dtype=np.int64))) if query is not None else None
    return top.indices.numpy(), top.values.numpy(), ent.numpy(), tgt.numpy(), q


SEQS = [([1, 5, 9, 30, 40], [7, 8, 9, 100, 200, 3]), ([4, 4], [300, 301, 302, 303, 304, 305, 306, 307, 10]),
        ([11, 12, 13, 14, 15, 16, 17], [2])]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gemma2"])
def test_chunked_scorer_matches_full_logits(tiny_model, arch, monkeypatch):
    m = load(tiny_model(arch=arch, seed=3))
    monkeypatch.setattr(hf, "CHUNK_BYTES", 4 * m.head_size * 3 * 4)  # 4 positions per chunk: many chunks
    k = 8
    rng = np.random.default_rng(0)
    queries = [rng.integers(0, m.vocab_size, size=(len(r), 5)) for _, r in SEQS]
    got = m.score([p for p, _ in SEQS], [r for _, r in SEQS], k=k, query_ids_LQ=queries)
    for (p, r), g, q in zip(SEQS, got, queries):
        ids, lps, ent, tgt, qlp = reference(m, p, r, k, q)
        assert len(g) == len(r)
        np.testing.assert_allclose(g.topk_logprobs_LK, lps, atol=2e-5)
        np.testing.assert_array_equal(g.topk_ids_LK[:, 0], ids[:, 0])
        np.testing.assert_allclose(g.entropy_L, ent, atol=2e-5)
        np.testing.assert_allclose(g.sampled_logprob_L, tgt, atol=2e-5)
        np.testing.assert_allclose(g.query_logprobs_LQ, qlp.numpy(), atol=2e-5)


def test_gemma2_softcapping_is_applied(tiny_model):
    m = load(tiny_model(arch="gemma2", seed=1, softcap=2.0))
    assert m.transform.softcap == 2.0
    p, r = SEQS[0]
    g = m.score([p], [r], k=4)[0]
    _, lps, _, _, _ = reference(m, p, r, 4)
    np.testing.assert_allclose(g.topk_logprobs_LK, lps, atol=2e-5)


def test_self_check_refuses_unknown_logit_transform(tiny_model, monkeypatch):
    # pretend the scorer did not know gemma2's soft-capping: the load-time self-check must catch it
    monkeypatch.setattr(hf.LogitTransform, "__call__", lambda self, x: x)
    with pytest.raises(ModelLoadError, match="not supported"):
        load(tiny_model(arch="gemma2", seed=1, softcap=2.0))


def test_padded_output_head_is_cut_to_the_tokenizer(tiny_model):
    m = load(tiny_model(arch="qwen2", seed=0, head_pad=13))
    assert m.head_size == m.vocab_size + 13
    g = m.score([SEQS[0][0]], [SEQS[0][1]], k=5)[0]
    assert g.topk_ids_LK.max() < m.vocab_size
    _, lps, ent, _, _ = reference(m, *SEQS[0], 5)
    np.testing.assert_allclose(g.entropy_L, ent, atol=2e-5)


def test_batch_padding_never_changes_a_sequence(tiny_model):
    m = load(tiny_model(arch="llama", seed=5))
    alone = m.score([SEQS[2][0]], [SEQS[2][1]], k=6)[0]
    batched = m.score([p for p, _ in SEQS], [r for _, r in SEQS], k=6)[2]
    np.testing.assert_allclose(alone.topk_logprobs_LK, batched.topk_logprobs_LK, atol=1e-5)
    np.testing.assert_allclose(alone.entropy_L, batched.entropy_L, atol=1e-5)


def test_generate_cuts_at_eos_and_ignores_checkpoint_sampling_defaults(tiny_model):
    m = load(tiny_model(arch="llama", seed=2))
    m.model.generation_config.top_k = 1  # a checkpoint default that would make sampling greedy
    m.model.generation_config.do_sample = False
    eos = set(m.eos_ids())
    prompts = [[1, 2, 3], [5, 6, 7, 8, 9, 10]]
    s = SamplingSettings(samples=4, temperature=1.0, max_new_tokens=12)
    gens = m.generate(prompts, s, seed=0)
    assert [len(g) for g in gens] == [4, 4]
    for per_prompt in gens:
        for g in per_prompt:
            assert 1 <= len(g.response_ids) <= 12
            body = g.response_ids[:-1] if g.finish_reason == "stop" else g.response_ids
            assert not eos & set(body), "nothing may follow the first EOS"
            if g.finish_reason == "stop":
                assert g.response_ids[-1] in eos
            else:
                assert len(g.response_ids) == 12
    # sampling at T=1 (not the checkpoint's greedy top_k=1): samples of one prompt differ
    assert len({g.response_ids for g in gens[1]}) > 1
    again = m.generate(prompts, s, seed=0)
    assert again == gens  # same seed, same samples


def test_generate_never_samples_head_padding_rows(tiny_model):
    m = load(tiny_model(arch="qwen2", seed=0, head_pad=9))
    with torch.no_grad():  # make the padding rows overwhelmingly likely
        m.model.get_output_embeddings().weight[m.vocab_size:] = 50.0
    gens = m.generate([[1, 2, 3]], SamplingSettings(samples=3, max_new_tokens=6), seed=0)
    assert all(t < m.vocab_size for g in gens[0] for t in g.response_ids)


def test_reduce_logits_handles_masked_vocab():
    logits = torch.tensor([[0.0, 0.0, -float("inf"), -float("inf")]])
    top_ids, top_lp, ent, tgt, _ = hf.reduce_logits(logits, 2, torch.tensor([1]), None)
    assert float(ent[0]) == pytest.approx(np.log(2))
    assert float(tgt[0]) == pytest.approx(np.log(0.5))
