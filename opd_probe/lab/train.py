"""Tokenizer, models and the plain training / evaluation loops of the zoo (CPU, deterministic under a seed)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch

from .task import CHARS, TEMPLATE, prompt_text, scratchpad

EOS, PAD = "<eos>", "<pad>"


def make_tokenizer():
    """A character-level tokenizer shared by every zoo model (WordLevel over single characters)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([PAD, EOS] + sorted(set(CHARS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)
    hf.chat_template = TEMPLATE
    hf.model_max_length = 128
    return hf


def new_model(tok, seed: int, hidden: int = 128, layers: int = 2, heads: int = 2, intermediate: int = 256):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=128,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False, attention_dropout=0.0,
    )
    return LlamaForCausalLM(cfg)


def encode(tok, a: int, b: int, fmt: str, rng: random.Random, drop_carry: float = 0.0) -> tuple[list[int], list[int]]:
    """Token ids of the rendered prompt and of the response + EOS. Character-level, so a dictionary lookup per
    character gives exactly what the chat template + tokenizer give (tested), ~100x faster in the training loop."""
    vocab = _char_ids(tok)
    prompt = [vocab[c] for c in prompt_text(a, b) + ">"]
    resp = [vocab[c] for c in scratchpad(a, b, fmt, rng, drop_carry)] + [tok.eos_token_id]
    return prompt, resp


_CHAR_IDS: dict[int, dict[str, int]] = {}


def _char_ids(tok) -> dict[str, int]:
    key = id(tok)
    if key not in _CHAR_IDS:
        _CHAR_IDS[key] = tok.get_vocab()
    return _CHAR_IDS[key]


def addition_batches(tok, problems_fn, fmt: str, drop_carry: float = 0.0):
    """The zoo's ``batch_fn`` for ``train``: ``problems_fn(rng, n)`` draws n (a, b) problems, encoded in ``fmt``."""
    return lambda rng, n: [encode(tok, a, b, fmt, rng, drop_carry) for a, b in problems_fn(rng, n)]


def train(model, tok, batch_fn, steps: int, seed: int, lr: float = 3e-3, batch: int = 64,
          warmup: int = 100, log=None) -> None:
    """Next-token cross-entropy on response tokens; AdamW with warmup and cosine decay.

    ``batch_fn(rng, n)`` returns n (prompt ids, response ids) pairs; a fresh batch each step (no epochs, no
    overfitting).
    """
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    for step in range(steps):
        seqs = batch_fn(rng, batch)
        T = max(len(p) + len(r) for p, r in seqs)
        ids = torch.full((batch, T), tok.pad_token_id)
        labels = torch.full((batch, T), -100)
        for i, (p, r) in enumerate(seqs):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            labels[i, len(p) : len(p) + len(r)] = torch.tensor(r)
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log and (step % 250 == 0 or step == steps - 1):
            log(f"  step {step:5d} loss {loss.item():.4f}")
    model.eval()


@torch.no_grad()
def accuracy(model, tok, problems: list[tuple[int, int]], batch: int = 200) -> float:
    """Greedy answer accuracy (the answer after 'Answer:' must equal a + b), any scratchpad format."""
    from transformers import GenerationConfig

    model.eval()
    correct = 0
    gc = GenerationConfig(do_sample=False, max_new_tokens=80, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
    for b0 in range(0, len(problems), batch):
        chunk = problems[b0 : b0 + batch]
        rng = random.Random(0)
        prompts = [encode(tok, a, b, "aligned", rng)[0] for a, b in chunk]  # prompts are format-independent
        ids = torch.tensor(prompts)  # all prompts have the same length (zero-padded operands)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=gc)
        for (a, b), row in zip(chunk, out[:, ids.shape[1]:].tolist()):
            text = tok.decode(row, skip_special_tokens=True)
            correct += text.rsplit("Answer: ", 1)[-1].strip() == str(a + b) if "Answer: " in text else 0
    return correct / len(problems)


def save(model, tok, path: Path) -> None:
    model.save_pretrained(str(path), safe_serialization=True)
    tok.save_pretrained(str(path))
