"""Checks for the test-support builders in tests/tiny_models.py."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import tiny_models

TEXTS = [
    "Question: What is 12 + 7? Answer:",
    "Step 1: 4 * 5 = 20. Step 2:",
    "The cat sat on the mat and the dog",
    "Tom has 5 apples and gets 3 more. How many",
]


def _load(path):
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    return tok, model


@torch.no_grad()
def _logits(path, texts=TEXTS):
    tok, model = _load(path)
    enc = tok(texts, return_tensors="pt", padding=True)
    return model(**enc).logits, enc["attention_mask"].bool()


def test_tokenizer_basics(tok_dir):
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert len(tok) == 512
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == tiny_models.SPECIAL_TOKENS
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 0, 1)
    text = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == "<|system|>\nBe brief.<|endoftext|>\n<|user|>\nWhat is 2 + 3?<|endoftext|>\n<|assistant|>\n"
    ids = tok("Step 3: 12 + 7 = 19. Answer: 19")["input_ids"]
    assert tok.decode(ids) == "Step 3: 12 + 7 = 19. Answer: 19"
    assert len(ids) < 20  # the merges actually learned the corpus


def test_tokenizer_deterministic_and_other_variant(tmp_path, tok_dir):
    again = tiny_models.build_tokenizer(tmp_path / "again")
    other = tiny_models.build_tokenizer(tmp_path / "other", variant="other")
    base_tok = AutoTokenizer.from_pretrained(str(tok_dir))
    again_tok = AutoTokenizer.from_pretrained(str(again))
    other_tok = AutoTokenizer.from_pretrained(str(other))
    assert base_tok.get_vocab() == again_tok.get_vocab()
    assert (tok_dir / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()
    assert len(other_tok) == len(base_tok)
    assert other_tok.get_vocab() != base_tok.get_vocab()
    bv, ov = base_tok.get_vocab(), other_tok.get_vocab()
    assert sum(bv.get(t) != i for t, i in ov.items()) > 100


@pytest.mark.parametrize("arch", tiny_models.ARCHES)
def test_arch_builds_reloads_generates(tiny_model, arch):
    path = tiny_model(arch)
    assert (path / "model.safetensors").is_file()
    tok, model = _load(path)
    assert model.config.vocab_size == len(tok) == 512
    assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    enc = tok(["Question: What is 2 + 3? Answer:"], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape == (1, enc["input_ids"].shape[1] + 5)


@pytest.mark.parametrize("arch", tiny_models.ARCHES)
def test_distributions_are_peaked(tiny_model, arch):
    logits, mask = _logits(tiny_model(arch))
    logp = logits.float().log_softmax(-1)
    ent = -(logp.exp() * logp).sum(-1)[mask]
    assert torch.isfinite(ent).all()
    assert ent.mean().item() < 0.9 * math.log(logits.shape[-1])


@pytest.mark.parametrize("arch", tiny_models.ARCHES)
def test_seeds_differ_and_are_reproducible(tiny_model, tok_dir, tmp_path, arch):
    l0, mask = _logits(tiny_model(arch, seed=0))
    l1, _ = _logits(tiny_model(arch, seed=1))
    top0, top1 = l0.topk(5, dim=-1).indices[mask], l1.topk(5, dim=-1).indices[mask]
    assert any(set(a.tolist()) != set(b.tolist()) for a, b in zip(top0, top1))
    # same seed -> identical weights
    again = tiny_models.build_tiny_model(tmp_path / "again", arch=arch, seed=0, tokenizer_dir=tok_dir)
    la, _ = _logits(again)
    assert torch.equal(la, l0)


def test_head_pad(tiny_model):
    path = tiny_model("qwen2", head_pad=64)
    tok, model = _load(path)
    logits, _ = _logits(path)
    assert logits.shape[-1] == len(tok) + 64 == model.config.vocab_size


def test_gemma2_softcap_applied(tiny_model):
    path = tiny_model("gemma2")
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["final_logit_softcapping"] == 3.0
    tok, model = _load(path)
    enc = tok(TEXTS[:1], return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
        raw = model.lm_head(out.hidden_states[-1])
    assert out.logits.abs().max() <= 3.0 + 1e-5
    assert raw.abs().max() > 6.0  # capping changes the logits a lot
    torch.testing.assert_close(out.logits, 3.0 * torch.tanh(raw / 3.0), rtol=1e-5, atol=1e-5)


def test_init_from_gives_similar_teacher(tiny_model):
    base = tiny_model("llama", seed=0)
    similar = tiny_model("llama", seed=7, init_from=base)
    other = tiny_model("llama", seed=1)
    lb, mask = _logits(base)
    ls, _ = _logits(similar)
    lo, _ = _logits(other)
    pb = lb.log_softmax(-1)

    def kl(q):
        return (pb.exp() * (pb - q.log_softmax(-1))).sum(-1)[mask].mean().item()

    assert 0 < kl(ls) < 0.1 * kl(lo)


@pytest.mark.slow
def test_smollm2_full_and_truncated(smollm2):
    for k in (None, 6):
        path = smollm2(k)
        assert (path / ".complete").is_file()
        tok, model = _load(path)
        assert model.config.vocab_size == 49152 == len(tok)
        assert model.config.num_hidden_layers == (30 if k is None else k)
        assert "quantization_config" not in json.loads((path / "config.json").read_text())
        assert tok.chat_template and "<|im_start|>" in tok.chat_template
        enc = tok.apply_chat_template(
            [{"role": "user", "content": "What is 2 + 3?"}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.no_grad():
            logits = model(**enc).logits
        assert logits.shape[-1] == 49152
        assert torch.isfinite(logits).all()
        if k is None:  # the real model should be confident about something
            logp = logits[0].log_softmax(-1)
            assert (-(logp.exp() * logp).sum(-1)).mean() < 0.5 * math.log(49152)
