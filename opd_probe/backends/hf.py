"""transformers backend: batched sampling and the chunked scorer, on CPU or GPU.

The scorer never holds (positions x vocab) logits for a whole sequence: it runs the decoder once, gathers the
hidden states that predict response tokens, and applies the output head to chunks of them, reducing each chunk
(log-softmax, top-k, entropy, gathers) before the next (docs/performance.md).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import ModelLoadError
from ..prompts import template_hash
from .base import Generation, ModelSpec, SamplingSettings, ScoreArrays
from .loading import (TokenizerMethods, context_length_of, eos_ids_of, first_line, load_config, load_tokenizer,
                      resolve_model_path, vocab_hash)

# Bytes one chunk of output-head work may use: a float32 logits buffer and one same-sized scratch buffer.
# Large enough that the head matmul stays efficient (SmolLM2: 1365 positions per chunk), and fixed, so peak
# memory does not grow with sequence length x vocabulary (benchmarks/bench_scorer.py).
CHUNK_BYTES = 512 * 2**20


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ModelLoadError(f"unknown dtype {name!r}", fix="use one of: auto, float32, bfloat16, float16")
    return table[name]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {name} was requested but CUDA is not available on this machine",
                             fix="use --device cpu (or auto), or run on a machine with a GPU")
    return dev


class LogitTransform:
    """Architecture-specific maps applied to raw head outputs by the model's own forward.

    Gemma 2/3: final-logit soft-capping ``cap * tanh(x / cap)``; Cohere: ``x * logit_scale``;
    Granite: ``x / logits_scaling``. Anything else is caught by the load-time self-check.
    """

    def __init__(self, config):
        text_cfg = getattr(config, "get_text_config", lambda: config)()
        self.softcap = getattr(text_cfg, "final_logit_softcapping", None)
        self.scale = getattr(text_cfg, "logit_scale", None)
        self.divide = getattr(text_cfg, "logits_scaling", None)

    def functional(self, logits: torch.Tensor) -> torch.Tensor:
        """Out of place, for autograd (verify's training forward)."""
        if self.scale is not None:
            logits = logits * self.scale
        if self.divide is not None:
            logits = logits / self.divide
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Applied in place (the scorer owns the float32 logits buffer)."""
        if self.scale is not None:
            logits.mul_(self.scale)
        if self.divide is not None:
            logits.div_(self.divide)
        if self.softcap is not None:
            logits.div_(self.softcap).tanh_().mul_(self.softcap)
        return logits


def reduce_logits(
    logits_CV: torch.Tensor, k: int, targets_C: torch.Tensor, query_CQ: torch.Tensor | None,
    work_CV: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """Reduce one chunk of float32 logits to per-position statistics. Overwrites ``logits_CV``.

    Returns (topk_ids_CK, topk_logprobs_CK, entropy_C, target_logprob_C, query_logprobs_CQ or None).
    ``work_CV`` is an optional same-shaped scratch buffer (reused across chunks to avoid page faults on CPU).
    Lean on purpose (benchmarks/bench_scorer.py): one max, one exp, one sum, one product-sum and one top-k pass,
    with log-softmax values formed only where they are needed: log p(v) = (x_v - max) - log Σ exp(x - max).
    """
    x = logits_CV
    x.sub_(x.amax(-1, keepdim=True))  # x - max: every exp below is <= 1
    p = torch.exp(x, out=work_CV) if work_CV is not None else torch.exp(x)  # unnormalised probabilities
    s = p.sum(-1, keepdim=True)
    log_s = s.log()
    top_x, top_ids = torch.topk(x, k, dim=-1)
    target_lp = x.gather(-1, targets_C[:, None]).squeeze(-1) - log_s.squeeze(-1)
    query_lp = x.gather(-1, query_CQ) - log_s if query_CQ is not None else None
    # H = -Σ p̂ log p̂ with p̂ = p/s, log p̂ = x - log s  =>  H = log s - Σ p x / s
    # (0 * -inf = nan where a logit is -inf: such rows are recomputed below with the 0 log 0 = 0 convention)
    px = p.mul_(x).sum(-1, keepdim=True)
    entropy = (log_s - px / s).squeeze(-1)
    bad = ~torch.isfinite(entropy)
    if bad.any():
        xb, lb = x[bad], log_s[bad]
        pb = torch.exp(xb - lb)
        entropy[bad] = -torch.where(pb > 0, pb * (xb - lb), torch.zeros((), dtype=pb.dtype, device=pb.device)).sum(-1)
    return top_ids, top_x - log_s, entropy, target_lp, query_lp


class HFModel(TokenizerMethods):
    """A transformers causal LM with its tokenizer, ready to sample and to score."""

    def __init__(self, model, tokenizer, spec: ModelSpec, device: torch.device, role: str):
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.device = device
        self.role = role
        self.vocab_size = len(tokenizer)
        head = model.get_output_embeddings()
        self.head_size = int(head.weight.shape[0])
        # where the scorer's chunk buffers live: the head's device (with --device-map it can differ from the
        # embeddings'; an offloaded head has its weight on "meta" and runs where accelerate moves it)
        self.head_device = head.weight.device if head.weight.device.type != "meta" else device
        if self.head_size < self.vocab_size:
            raise ModelLoadError(
                f"{role} model {spec.path}: output head has {self.head_size} rows but the tokenizer has "
                f"{self.vocab_size} tokens",
                fix="check that the tokenizer in the model folder belongs to this model",
            )
        self.transform = LogitTransform(model.config)
        self.info = self._info()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, spec: ModelSpec, role: str = "model") -> "HFModel":
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress display owns stderr

        path = resolve_model_path(spec, role)
        kw = dict(trust_remote_code=spec.trust_remote_code, revision=spec.revision)
        config = load_config(path, spec, role)
        placement = {}
        if spec.device_map is not None:
            # accelerate places the layers (across GPUs, then CPU); the scorer follows the hidden states
            import importlib.util

            if importlib.util.find_spec("accelerate") is None:
                raise ModelLoadError(f"--device-map {spec.device_map} needs the accelerate package",
                                     fix="pip install accelerate (or drop --device-map)")
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            placement = {"device_map": spec.device_map}
        else:
            device = resolve_device(spec.device)
        dtype = resolve_dtype(spec.dtype, device)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype, **placement, **kw)
        except ValueError as e:
            if "Unrecognized configuration class" in str(e) or "AutoModelForCausalLM" in str(e):
                raise ModelLoadError(
                    f"{role} model {spec.path!r} ({config.model_type}) is not a causal language model",
                    fix="pass a decoder-only model that AutoModelForCausalLM can load",
                ) from e
            raise ModelLoadError(f"could not load the {role} model {spec.path!r}: {first_line(e)}",
                                 fix="check the model folder is complete") from e
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"could not load the {role} model {spec.path!r}: {first_line(e)}",
                                 fix="check the model folder is complete (config.json, weights)") from e
        tokenizer = load_tokenizer(path, spec, role)
        if spec.device_map is None:
            model.to(device)
        else:  # inputs go where the embeddings are
            device = model.get_input_embeddings().weight.device
        model.eval()
        self = cls(model, tokenizer, spec, device, role)
        self.self_check()
        return self

    def _info(self) -> dict:
        cfg = self.model.config
        tok = self.tokenizer
        return {
            "path": self.spec.path,
            "revision": getattr(cfg, "_commit_hash", None) or self.spec.revision,
            "architecture": (cfg.architectures or [type(self.model).__name__])[0],
            "model_type": cfg.model_type,
            "num_parameters": int(sum(p.numel() for p in self.model.parameters())),
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "device": self._placement(),
            "vocab_size": self.vocab_size,
            "head_size": self.head_size,
            "context_length": self.context_length(),
            "tokenizer_hash": vocab_hash(tok.get_vocab()),
            "chat_template_hash": template_hash(tok),
            "eos_token_ids": self.eos_ids(),
            "backend": "hf",
        }

    def _placement(self) -> str:
        if self.spec.device_map is None:
            return str(self.device)
        placed = getattr(self.model, "hf_device_map", None) or {}  # absent when it all fits on one device
        used = sorted({str(v) for v in placed.values()}) or [str(self.device)]
        return f"{self.spec.device_map}: {', '.join(used)}"

    def self_check(self) -> None:
        """Compare the chunked scorer with the model's own logits on a short sequence; refuse on mismatch.

        Protects against architectures whose forward applies something to the head output that
        ``LogitTransform`` does not know about.
        """
        n = 12
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, self.vocab_size, (1, n), generator=g).tolist()[0]
        with torch.no_grad():
            full = self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0, :, : self.vocab_size]
            want = torch.log_softmax(full.float(), -1)[4 - 1 : n - 1]
            # causal: changing the last token must not change any earlier prediction (BERT-like encoders load
            # through AutoModelForCausalLM too, but attend both ways)
            alt = ids[:-1] + [(ids[-1] + 1) % self.vocab_size]
            alt_full = self.model(input_ids=torch.tensor([alt], device=self.device)).logits[0, :, : self.vocab_size]
            leak = float((torch.log_softmax(alt_full.float(), -1) - torch.log_softmax(full.float(), -1))[: n - 1]
                         .abs().max())
        tol = 1e-3 if self.model.dtype == torch.float32 else 0.15
        if not leak <= (1e-5 if self.model.dtype == torch.float32 else tol):  # causal models: exactly 0 here
            raise ModelLoadError(
                f"{self.role} model {self.spec.path!r} ({self.model.config.model_type}) is not a causal language "
                f"model: its predictions depend on later tokens",
                fix="pass a decoder-only model (the student and teachers must be causal LMs)",
            )
        got = self.score([ids[:4]], [ids[4:]], k=4)[0]
        want_top = want.topk(4, -1).values.cpu().numpy()
        err = float(np.abs(got.topk_logprobs_LK - want_top).max())
        if not err <= tol:
            raise ModelLoadError(
                f"the chunked scorer disagrees with the model's own logits for {self.info['architecture']} "
                f"(max |Δ log p| = {err:.3g} > {tol}); this architecture is not supported yet",
                fix="open an issue with the model's config.json; meanwhile use a supported architecture "
                "(llama, qwen2, gpt2, gemma/gemma2, mistral, ...)",
            )

    # ------------------------------------------------------------------ helpers
    def vocab(self) -> dict[str, int]:
        return self.tokenizer.get_vocab()

    def context_length(self) -> int | None:
        return context_length_of(self.model.config)

    def eos_ids(self) -> list[int]:
        return eos_ids_of(self.tokenizer, getattr(self.model, "generation_config", None))

    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            eos = self.eos_ids()
            pad = eos[0] if eos else 0
        return int(pad)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(
        self, prompt_ids: Sequence[Sequence[int]], settings: SamplingSettings, seed: int
    ) -> list[list[Generation]]:
        """Sample ``settings.samples`` responses per prompt; returns one list of Generations per prompt.

        Left-pads the batch (decoder-only models continue from the right edge). Sampling settings are passed
        explicitly, so a checkpoint's generation_config (top_k=50, repetition penalties, ...) cannot change the
        distribution the student samples from: OPD samples from the plain softmax at the given temperature.
        """
        from transformers import GenerationConfig

        pad = self.pad_id()
        eos = self.eos_ids()
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, p in enumerate(prompt_ids):
            input_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        greedy = settings.temperature == 0
        gc = GenerationConfig(
            do_sample=not greedy,
            temperature=None if greedy else settings.temperature,
            top_p=None if greedy else settings.top_p,
            top_k=None if greedy else 0,
            max_new_tokens=settings.max_new_tokens,
            num_return_sequences=settings.samples,
            eos_token_id=eos or None,
            pad_token_id=pad,
            # never sample from output-head padding rows: those ids are not tokens
            suppress_tokens=list(range(self.vocab_size, self.head_size)) or None,
        )
        torch.manual_seed(seed)
        out = self.model.generate(
            input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), generation_config=gc
        )
        new = out[:, width:].cpu().tolist()
        eos_set = set(eos)
        result: list[list[Generation]] = []
        for i in range(len(prompt_ids)):
            gens = []
            for j in range(settings.samples):
                row = new[i * settings.samples + j]
                cut = next((t + 1 for t, tok in enumerate(row) if tok in eos_set), None)
                if cut is None:
                    gens.append(Generation(tuple(row[: settings.max_new_tokens]), "length"))
                else:
                    gens.append(Generation(tuple(row[:cut]), "stop"))
            result.append(gens)
        return result

    # ------------------------------------------------------------------ scoring
    def _head_logits(self, hidden_CH: torch.Tensor, out_CV: torch.Tensor) -> torch.Tensor:
        """float32 logits over the tokenizer's vocabulary (head padding rows are never computed), written into
        ``out_CV`` when the head is a plain float32 linear layer, with the model's own logit transform."""
        head = self.model.get_output_embeddings()
        if (isinstance(head, torch.nn.Linear) and head.weight.dtype == torch.float32 and hidden_CH.dtype == torch.float32
                and head.weight.device == hidden_CH.device):
            w = head.weight[: self.vocab_size]
            if head.bias is None:
                logits = torch.mm(hidden_CH, w.t(), out=out_CV)
            else:
                logits = torch.addmm(head.bias[: self.vocab_size], hidden_CH, w.t(), out=out_CV)
        else:
            logits = out_CV.copy_(head(hidden_CH)[:, : self.vocab_size])
        return self.transform(logits)

    def response_hidden(
        self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder pass over right-padded (prompt + response) sequences.

        Returns (hidden_NH, targets_N): the final hidden states at the positions that predict each response
        token (all sequences concatenated, in order) and those tokens. With causal attention, padding after a
        sequence cannot change its positions, and only positions that predict real response tokens are
        gathered, so no padded position is ever scored. Differentiable when called with grad enabled.
        """
        B = len(prompt_ids)
        T = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids))
        ids = torch.full((B, T), self.pad_id(), dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        rows, cols, targets = [], [], []
        for b, (p, r) in enumerate(zip(prompt_ids, response_ids)):
            seq = list(p) + list(r)
            ids[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[b, : len(seq)] = 1
            # hidden state at position i predicts token i+1: response token j sits at len(p)+j
            rows.extend([b] * len(r))
            cols.extend(range(len(p) - 1, len(p) - 1 + len(r)))
            targets.extend(r)
        hidden_BTH = self.model.base_model(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
        ).last_hidden_state
        at = hidden_BTH.device  # the last layer's device (differs from self.device when layers are spread)
        hidden_NH = hidden_BTH[torch.tensor(rows, device=at), torch.tensor(cols, device=at)].to(self.head_device)
        return hidden_NH, torch.tensor(targets, dtype=torch.long, device=self.head_device)

    def response_logprobs(
        self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-vocabulary float32 log-probs (N, V) at every response position, differentiable (verify's
        training forward; it holds N x V, so keep verification batches small). Returns (logp_NV, targets_N)."""
        hidden_NH, targets_N = self.response_hidden(prompt_ids, response_ids)
        logits = self.model.get_output_embeddings()(hidden_NH)[:, : self.vocab_size].float()
        return torch.log_softmax(self.transform.functional(logits), dim=-1), targets_N

    @torch.no_grad()
    def score(
        self,
        prompt_ids: Sequence[Sequence[int]],
        response_ids: Sequence[Sequence[int]],
        k: int,
        query_ids_LQ: Sequence[np.ndarray] | None = None,
    ) -> list[ScoreArrays]:
        """Score the response positions of a batch of (prompt, response) sequences in one decoder pass.

        See ``response_hidden`` for how padding is kept out. ``query_ids_LQ[i]`` (int array, (len(response_ids[i]), Q)) asks for the log-probs of
        given ids at each position (the teacher is queried at the student's top-k ids).
        """
        hidden_NH, targets_N = self.response_hidden(prompt_ids, response_ids)
        query_NQ = None
        if query_ids_LQ is not None:
            query_NQ = torch.from_numpy(np.concatenate([np.asarray(q, dtype=np.int64) for q in query_ids_LQ]))
            query_NQ = query_NQ.to(self.head_device)
        n = hidden_NH.shape[0]
        chunk = max(1, min(n, CHUNK_BYTES // (4 * self.vocab_size * 2)))
        logits_buf = torch.empty((chunk, self.vocab_size), dtype=torch.float32, device=self.head_device)
        work_buf = torch.empty_like(logits_buf)
        outs = []
        for c0 in range(0, n, chunk):
            c1 = min(c0 + chunk, n)
            logits = self._head_logits(hidden_NH[c0:c1], logits_buf[: c1 - c0])
            q = query_NQ[c0:c1] if query_NQ is not None else None
            red = reduce_logits(logits, k, targets_N[c0:c1], q, work_CV=work_buf[: c1 - c0])
            outs.append([t.cpu() if t is not None else None for t in red])
        del logits_buf, work_buf
        top_ids = torch.cat([o[0] for o in outs]).numpy().astype(np.int32)
        top_lp = torch.cat([o[1] for o in outs]).numpy().astype(np.float32)
        ent = torch.cat([o[2] for o in outs]).numpy().astype(np.float32)
        tgt = torch.cat([o[3] for o in outs]).numpy().astype(np.float32)
        qlp = torch.cat([o[4] for o in outs]).numpy().astype(np.float32) if query_NQ is not None else None
        whole = ScoreArrays(top_ids, top_lp, ent, tgt, qlp)
        result, start = [], 0
        for r in response_ids:
            result.append(whole.slice(start, start + len(r)))
            start += len(r)
        return result
