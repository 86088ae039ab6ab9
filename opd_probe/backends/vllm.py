"""vLLM backend: student rollouts by vLLM sampling, scoring through prompt log-probs (teacher forcing).

Nothing here imports vllm at module import time: the pure functions that turn vLLM's outputs into
``ScoreArrays`` are tested without vLLM installed, and `opd-probe --help` never pays for the import.

What vLLM returns, and what the probe makes of it (docs/vllm.md has the measured errors):

- ``prompt_logprobs=K'`` over (prompt + response) gives, at every response position, the log-prob of the token
  that is there (exact: the sampled-token log-prob) and the model's top-K' ids and log-probs (exact: the top-k
  sets and their log-probs, k <= K'). Log-probs are vLLM's ``raw_logprobs``: log-softmax of the raw logits at
  temperature 1, over the model's output head.
- Entropy: vLLM returns no full-vocabulary entropy. From the top-K' we report the lower bound
  H >= -Σ_{i<=K'} p_i log p_i - r log p_(K'), r = 1 - Σ_{i<=K'} p_i (the tail mass r, with every tail token at most
  as likely as the K'-th). Flagged approximate; exact only when K' covers the whole vocabulary.
- The teacher's log-probs at the student's top-k ids (the top-k reverse KL needs them): exact through
  ``prompt_logprob_token_ids`` where the installed vLLM has it *and* the engine runs the V2 model runner (vLLM
  0.32 refuses the field otherwise). Without it, an id found in the teacher's top-K' (or equal to the response
  token) gets its exact log-prob; any other id gets log q_(K'), the teacher's K'-th log-prob, an upper bound on
  its true log-prob, so a state's top-k reverse KL becomes a lower bound. Those entries are flagged per id.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ..errors import InputError, ModelLoadError
from ..prompts import template_hash
from .base import Generation, ModelSpec, SamplingSettings, ScoreArrays, release_memory
from .loading import TokenizerMethods, folder_eos_ids

# How each approximation is made, for results.json and the reports (the numbers K' and the bound are filled in).
HOW_ENTROPY = ("vLLM returns top-K' log-probs only: entropy is the lower bound -Σ_top p log p - r log p_(K') "
               "(tail mass r, each tail token at most as likely as the K'-th), K'={kprime}")
HOW_QUERY = ("this vLLM engine cannot score chosen ids (prompt_logprob_token_ids needs vLLM >= 0.32 with the V2 "
             "model runner): a student top-k id outside the teacher's top-{kprime} gets the teacher's {kprime}-th "
             "log-prob, an upper bound, so the top-k reverse KL is a lower bound at those states")


# ------------------------------------------------------------------------------------------------ pure helpers
def entropy_lower_bound(topk_logprobs_LK: np.ndarray) -> np.ndarray:
    """(L,) lower bound on the full-vocabulary entropy from each row's top-K' log-probs (sorted descending, nats).

    H = -Σ_top p log p - Σ_tail p log p, and every tail token has p <= p_(K'), so -Σ_tail p log p >= -r log p_(K')
    with r = 1 - Σ_top p. Exact when the rows hold the whole distribution (r = 0).
    """
    lp = np.asarray(topk_logprobs_LK, dtype=np.float64)
    p = np.exp(lp)
    r = np.clip(1.0 - p.sum(axis=1), 0.0, None)
    with np.errstate(invalid="ignore"):  # 0 * -inf where a top entry has probability 0
        top = -np.where(p > 0, p * lp, 0.0).sum(axis=1)
    last = lp[:, -1]
    tail = np.where(r > 0, r * -np.where(np.isfinite(last), last, 0.0), 0.0)
    return (top + tail).astype(np.float32)


def query_from_topk(
    query_ids_LQ: np.ndarray, topk_ids_LK: np.ndarray, topk_logprobs_LK: np.ndarray,
    actual_ids_L: np.ndarray, actual_logprob_L: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Log-probs of ``query_ids_LQ`` looked up in each row's top-K' (and the row's actual token).

    Returns (values_LQ float32, exact_LQ bool). An id not found gets the row's smallest top-K' log-prob, an upper
    bound on its true log-prob (it ranks below the K'-th), and exact=False.
    """
    q = np.asarray(query_ids_LQ, dtype=np.int64)
    ids = np.asarray(topk_ids_LK, dtype=np.int64)
    lp = np.asarray(topk_logprobs_LK, dtype=np.float64)
    match = q[:, :, None] == ids[:, None, :]  # (L, Q, K')
    found = match.any(axis=-1)
    values = np.where(match, lp[:, None, :], 0.0).sum(axis=-1)
    is_actual = q == np.asarray(actual_ids_L, dtype=np.int64)[:, None]
    values = np.where(is_actual & ~found, np.asarray(actual_logprob_L, dtype=np.float64)[:, None], values)
    exact = found | is_actual
    values = np.where(exact, values, lp[:, -1][:, None])
    return values.astype(np.float32), exact


def position_arrays(prompt_logprobs, first: int, n: int, kprime: int,
                    actual_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions first..first+n-1 of a request's prompt log-probs -> (actual_logprob_L, top_ids_LK', top_lp_LK').

    ``prompt_logprobs`` is vLLM's FlatLogprobs (``flat_logprobs=True``: per position the actual token first, then
    ranks 1..K') or a list of {token_id: Logprob} dicts (older/other callers). Top entries come back sorted by
    log-prob, descending.
    """
    if n == 0:
        return np.zeros(0, np.float32), np.zeros((0, kprime), np.int64), np.zeros((0, kprime), np.float32)
    width = kprime + 1
    starts = getattr(prompt_logprobs, "start_indices", None)
    if starts is not None:
        s = np.asarray(starts[first:first + n])
        e = np.asarray(prompt_logprobs.end_indices[first:first + n])
        if len(s) == n and np.all(e - s == width) and np.all(s[1:] == e[:-1]):
            lo, hi = int(s[0]), int(e[-1])
            ids = np.asarray(prompt_logprobs.token_ids[lo:hi], dtype=np.int64).reshape(n, width)
            lps = np.asarray(prompt_logprobs.logprobs[lo:hi], dtype=np.float32).reshape(n, width)
            if not np.array_equal(ids[:, 0], np.asarray(actual_ids, dtype=np.int64)):
                raise RuntimeError("vLLM prompt log-probs are not aligned with the scored tokens")
            top_ids, top_lp = ids[:, 1:], lps[:, 1:]
            order = np.argsort(-top_lp, axis=1, kind="stable")  # already rank order; cheap insurance
            return (lps[:, 0], np.take_along_axis(top_ids, order, 1), np.take_along_axis(top_lp, order, 1))
    actual_lp = np.empty(n, np.float32)
    top_ids = np.empty((n, kprime), np.int64)
    top_lp = np.empty((n, kprime), np.float32)
    for j in range(n):
        d = prompt_logprobs[first + j]
        actual_lp[j] = d[int(actual_ids[j])].logprob
        ranked = sorted(((lp.rank, tid, lp.logprob) for tid, lp in d.items() if lp.rank is not None and
                         lp.rank <= kprime), key=lambda t: (t[0], -t[2]))
        if len(ranked) < kprime:
            raise RuntimeError(f"vLLM returned {len(ranked)} prompt log-probs at a position, expected {kprime}")
        top_ids[j] = [t[1] for t in ranked[:kprime]]
        top_lp[j] = [t[2] for t in ranked[:kprime]]
    return actual_lp, top_ids, top_lp


def drop_padding_ids(top_ids_LK: np.ndarray, top_lp_LK: np.ndarray, vocab_size: int,
                     k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove output-head padding rows (ids >= the tokenizer's size) from top-K' lists, keeping the order.

    vLLM normalises over the model's whole head; padding rows of trained models carry ~no mass, but they are not
    tokens and must not enter the top-k sets. Keeps the top min-over-rows real entries per row.
    """
    real = top_ids_LK < vocab_size
    if real.all():
        return top_ids_LK, top_lp_LK
    order = np.argsort(~real, axis=1, kind="stable")
    ids = np.take_along_axis(top_ids_LK, order, 1)
    lp = np.take_along_axis(top_lp_LK, order, 1)
    keep = int(real.sum(axis=1).min())
    if keep < k:
        raise ModelLoadError(
            f"vLLM ranked output-head padding rows (ids >= {vocab_size}) above real tokens: fewer than k={k} real "
            "tokens in a top list",
            fix="raise --vllm-logprobs, or score with --score-backend hf (which never computes padding rows)")
    return ids[:, :keep], lp[:, :keep]


def score_arrays_from_output(
    output, prompt_len: int, response_ids: Sequence[int], k: int, kprime: int, vocab_size: int,
    query_ids_LQ: np.ndarray | None, entropy_exact: bool,
) -> ScoreArrays:
    """One vLLM RequestOutput of a scoring request over (prompt + response) -> ScoreArrays of the response.

    Response token t is prompt position prompt_len + t; its prompt log-probs describe the distribution before it.
    ``output.prompt_token_id_logprobs`` (when the request asked ``prompt_logprob_token_ids`` from row
    prompt_len - 1) holds the exact log-probs of the query ids, one row per response token.
    """
    arrays = position_arrays(output.prompt_logprobs, prompt_len, len(response_ids), kprime, response_ids)
    return score_arrays_from_positions(*arrays, response_ids, k, vocab_size, query_ids_LQ, entropy_exact,
                                       getattr(output, "prompt_token_id_logprobs", None))


def score_arrays_from_positions(
    actual_lp: np.ndarray, top_ids: np.ndarray, top_lp: np.ndarray, response_ids: Sequence[int], k: int,
    vocab_size: int, query_ids_LQ: np.ndarray | None, entropy_exact: bool, exact_rows=None,
) -> ScoreArrays:
    """ScoreArrays from per-position (actual log-prob, top-K' ids, top-K' log-probs): padding rows dropped, the
    entropy bound, the query ids exact (``exact_rows``) or looked up in the top-K' (vLLM engine and served)."""
    n = len(response_ids)
    top_ids, top_lp = drop_padding_ids(top_ids, top_lp, vocab_size, k)
    entropy = entropy_lower_bound(top_lp)
    query = query_exact = None
    if query_ids_LQ is not None:
        if exact_rows is not None:
            query = np.asarray(exact_rows, dtype=np.float32)
            if query.shape != np.shape(query_ids_LQ):
                raise RuntimeError(f"vLLM scored {query.shape} chosen ids, asked for {np.shape(query_ids_LQ)}")
        else:
            query, exact = query_from_topk(query_ids_LQ, top_ids, top_lp, np.asarray(response_ids), actual_lp)
            query_exact = None if exact.all() else exact
    return ScoreArrays(
        topk_ids_LK=top_ids[:, :k].astype(np.int32),
        topk_logprobs_LK=top_lp[:, :k].astype(np.float32),
        entropy_L=entropy,
        sampled_logprob_L=actual_lp.astype(np.float32),
        query_logprobs_LQ=query,
        entropy_exact_L=None if entropy_exact else np.zeros(n, dtype=bool),
        query_exact_LQ=query_exact,
    )


def vllm_dtype(name: str, platform: str) -> str:
    """Our dtype names -> vLLM's. "auto" matches the transformers backend: float32 on CPU, the checkpoint's on GPU."""
    table = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
             "float16": "float16", "fp16": "float16"}
    if name == "auto":
        return "float32" if platform == "cpu" else "auto"
    if name not in table:
        raise ModelLoadError(f"unknown dtype {name!r}", fix="use one of: auto, float32, bfloat16, float16")
    return table[name]


def _one_line(e: BaseException, limit: int = 400) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _quiet_vllm_env() -> None:
    """Before vLLM is imported: its logs go to stderr (stdout carries results, e.g. --json), warnings only, and no
    usage statistics are sent (a probe often runs offline). Each can still be set by the user."""
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")


# ------------------------------------------------------------------------------------------------ the model
class VLLMModel(TokenizerMethods):
    """A vLLM engine for one model plus its transformers tokenizer (rendering, vocabulary, decoding)."""

    schedules_own_batches = True  # the pipeline sends whole parts; vLLM schedules requests itself

    def __init__(self, llm, tokenizer, config, spec: ModelSpec, role: str, kprime: int, exact_ids: bool,
                 platform: str, engine_args: dict, path: str):
        self.llm = llm
        self.path = path
        self.tokenizer = tokenizer
        self.config = config
        self.spec = spec
        self.role = role
        self.kprime = kprime
        self.exact_ids = exact_ids
        self.platform = platform
        self.engine_args = engine_args
        self.vocab_size = len(tokenizer)
        text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.head_size = int(getattr(text_cfg, "vocab_size", None) or self.vocab_size)
        # the whole distribution is returned when K' covers the head: then the "bound" is the entropy itself
        self.entropy_exact = kprime >= self.head_size
        self._eos = None
        self.info = self._info()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, spec: ModelSpec, role: str = "model") -> "VLLMModel":
        from .loading import context_length_of, load_config, load_tokenizer, resolve_model_path

        path = resolve_model_path(spec, role)
        config = load_config(path, spec, role)
        tokenizer = load_tokenizer(path, spec, role)
        vocab = len(tokenizer)
        text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
        head = int(getattr(text_cfg, "vocab_size", None) or vocab)
        k = spec.top_k or 0
        if k > vocab:  # before the engine start, which takes minutes for a large model
            raise InputError(f"--top-k {k} is larger than the {role}'s vocabulary ({vocab} tokens)",
                             fix=f"use --top-k {min(16, vocab)} (the paper's default is 16)")
        # vLLM's default max_logprobs (20) rejects larger requests: size the cap to what will be asked
        kprime = min(max(k, spec.vllm_logprobs), head)
        _quiet_vllm_env()
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except Exception as e:  # noqa: BLE001 - a broken install (e.g. torchvision built for another torch)
            from . import VLLM_INSTALL

            raise ModelLoadError(f"vLLM is installed but could not be imported: {_one_line(e)}",
                                 fix=f"reinstall it: {VLLM_INSTALL}") from e
        platform = str(getattr(current_platform, "device_type", "") or "cuda")
        if spec.device not in ("auto", platform):
            raise InputError(
                f"--device {spec.device} with the vllm backend: this vLLM build runs on {platform!r}",
                fix="drop --device (vLLM picks its platform from the installed build; choose GPUs with "
                "CUDA_VISIBLE_DEVICES and --tensor-parallel-size)")
        ctx = context_length_of(config)
        if spec.max_model_len is not None and ctx is not None and spec.max_model_len > ctx:
            raise InputError(f"--max-model-len {spec.max_model_len} exceeds the {role}'s context of {ctx} tokens",
                             fix=f"use --max-model-len {ctx} or less")
        engine_args = dict(
            model=path, tokenizer=path, dtype=vllm_dtype(spec.dtype, platform), seed=0,
            trust_remote_code=spec.trust_remote_code, revision=spec.revision,
            tensor_parallel_size=spec.tensor_parallel_size, pipeline_parallel_size=spec.pipeline_parallel_size,
            gpu_memory_utilization=spec.gpu_memory_utilization,
            max_logprobs=kprime,
            logprobs_mode="raw_logprobs",  # log-softmax of the raw logits: temperature 1, no sampling filters
            # prompt log-probs must not depend on what else was scored before (vllm#42019): no prefix cache
            enable_prefix_caching=False,
            generation_config="vllm",  # sample with exactly our settings, not the checkpoint's defaults
            enforce_eager=platform == "cpu",  # torch.compile warm-up costs more than it saves on CPU
        )
        if spec.max_model_len is not None:
            engine_args["max_model_len"] = spec.max_model_len
        try:
            llm = LLM(**engine_args)
        except Exception as e:  # noqa: BLE001 - vLLM raises many types, often from its engine process
            raise ModelLoadError(
                f"vLLM could not start an engine for the {role} model {spec.path!r}: {_one_line(e)}",
                fix="lower --max-model-len (the KV cache must hold one full-length sequence; on CPU raise "
                "VLLM_CPU_KVCACHE_SPACE), raise --gpu-memory-utilization or --tensor-parallel-size, or use "
                "--backend hf; --debug shows vLLM's own log above",
            ) from e
        return cls(llm, tokenizer, config, spec, role, kprime, _exact_id_scoring(llm), platform,
                   {k_: v for k_, v in engine_args.items() if k_ not in ("model", "tokenizer")}, path)

    def close(self) -> None:
        """Shut the engine down (its process and GPU memory), so the next model can load."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        try:
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
        finally:
            del llm, core
            release_memory()

    def _info(self) -> dict:
        from .loading import vocab_hash

        tok = self.tokenizer
        cfg = self.config
        try:
            import vllm

            version = vllm.__version__
        except Exception:  # noqa: BLE001  # pragma: no cover
            version = None
        mc = getattr(getattr(self.llm, "llm_engine", None), "vllm_config", None)
        mc = getattr(mc, "model_config", None)
        return {
            "path": self.spec.path,
            "revision": getattr(cfg, "_commit_hash", None) or self.spec.revision,
            "architecture": (getattr(cfg, "architectures", None) or ["?"])[0],
            "model_type": getattr(cfg, "model_type", None),
            "dtype": str(getattr(mc, "dtype", self.engine_args.get("dtype"))).replace("torch.", ""),
            "device": self.platform,
            "vocab_size": self.vocab_size,
            "head_size": self.head_size,
            "context_length": self.context_length(),
            "tokenizer_hash": vocab_hash(tok.get_vocab()),
            "chat_template_hash": template_hash(tok),
            "eos_token_ids": self.eos_ids(),
            "backend": "vllm",
            "vllm_version": version,
            "engine_args": self.engine_args,
            "logprobs_per_position": self.kprime,
            "exact_id_scoring": self.exact_ids,
            "approximations": {
                **({} if self.entropy_exact else {"entropy": HOW_ENTROPY.format(kprime=self.kprime)}),
                **({} if self.exact_ids else {"query": HOW_QUERY.format(kprime=self.kprime)}),
            },
            "normalised_over": ("the model's output head" if self.head_size == self.vocab_size else
                                f"the model's {self.head_size} output-head rows (the transformers backend uses the "
                                f"tokenizer's {self.vocab_size} ids)"),
        }

    # ------------------------------------------------------------------ helpers
    def vocab(self) -> dict[str, int]:
        return self.tokenizer.get_vocab()

    def context_length(self) -> int | None:
        """The engine's max_model_len, less one: a scored sequence plus the one token vLLM must generate."""
        mc = getattr(getattr(getattr(self.llm, "llm_engine", None), "vllm_config", None), "model_config", None)
        n = getattr(mc, "max_model_len", None)
        if n is None:
            from .loading import context_length_of

            n = self.spec.max_model_len or context_length_of(self.config)
        return None if n is None else int(n) - 1

    def eos_ids(self) -> list[int]:
        if self._eos is None:
            self._eos = folder_eos_ids(self.tokenizer, self.path, self.spec.revision)
        return self._eos

    # ------------------------------------------------------------------ sampling
    def generate(self, prompt_ids: Sequence[Sequence[int]], settings: SamplingSettings,
                 seed: int) -> list[list[Generation]]:
        """``settings.samples`` responses per prompt at the plain softmax (temperature, top-p; no top-k, no
        penalties, the checkpoint's generation defaults ignored), as the transformers backend samples.

        Request i is seeded with seed + i * samples (vLLM seeds sample j with request seed + j), so a batch's
        draws do not depend on how vLLM schedules it.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        eos = self.eos_ids()
        greedy = settings.temperature == 0
        base = dict(
            # vLLM refuses n > 1 when greedy; every greedy sample is the same, so one is drawn and copied
            n=1 if greedy else settings.samples, max_tokens=settings.max_new_tokens, temperature=settings.temperature,
            top_p=1.0 if greedy else settings.top_p, top_k=0, stop_token_ids=eos or None, detokenize=False,
        )
        if self.head_size > self.vocab_size:  # never sample output-head padding rows: they are not tokens
            base["allowed_token_ids"] = list(range(self.vocab_size))
        params = [SamplingParams(seed=(seed + i * settings.samples) % (2**63), **base)
                  for i in range(len(prompt_ids))]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids], params,
                                    use_tqdm=False)
        eos_set = set(eos)
        result = []
        for out in outputs:
            gens = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                ids = tuple(int(t) for t in c.token_ids)
                if c.finish_reason == "stop" and ids and ids[-1] in eos_set:
                    gens.append(Generation(ids, "stop"))
                elif c.finish_reason == "length":
                    gens.append(Generation(ids, "length"))
                else:
                    raise RuntimeError(f"vLLM finished a sample with {c.finish_reason!r} "
                                       f"(stop reason {c.stop_reason!r}), expected EOS or the length limit")
            result.append(gens * settings.samples if greedy else gens)
        return result

    # ------------------------------------------------------------------ scoring
    def score(
        self,
        prompt_ids: Sequence[Sequence[int]],
        response_ids: Sequence[Sequence[int]],
        k: int,
        query_ids_LQ: Sequence[np.ndarray] | None = None,
    ) -> list[ScoreArrays]:
        """Teacher-forced scoring: one prompt-log-prob request per (prompt + response), all in one engine call."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if k > self.kprime:
            raise InputError(f"k={k} exceeds the {self.kprime} log-probs per position this engine was built for",
                             fix="raise --vllm-logprobs to at least --top-k")
        prompts, params = [], []
        for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
            kw = dict(max_tokens=1, temperature=0.0, prompt_logprobs=self.kprime, flat_logprobs=True,
                      detokenize=False)
            if query_ids_LQ is not None and self.exact_ids and len(r) > 0:
                # row j scores ids as predictions of prompt token (start + j + 1) = response token j
                kw["prompt_logprob_token_ids"] = np.ascontiguousarray(query_ids_LQ[i], dtype=np.int64)
                kw["prompt_logprob_start"] = len(p) - 1
            prompts.append(TokensPrompt(prompt_token_ids=list(p) + list(r)))
            params.append(SamplingParams(**kw))
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            score_arrays_from_output(
                out, len(p), r, k, self.kprime, self.vocab_size,
                None if query_ids_LQ is None else np.asarray(query_ids_LQ[i]), self.entropy_exact)
            for i, (out, p, r) in enumerate(zip(outputs, prompt_ids, response_ids))
        ]


def _exact_id_scoring(llm) -> bool:
    """True where vLLM can score chosen ids at prompt positions: the SamplingParams field exists (vLLM >= 0.32)
    and the engine runs the V2 model runner, which vLLM 0.32 requires for it (on CPU that needs triton-cpu)."""
    from vllm import SamplingParams

    fields = getattr(SamplingParams, "__struct_fields__", None) or getattr(SamplingParams, "__dataclass_fields__", {})
    if "prompt_logprob_token_ids" not in fields:
        return False
    cfg = getattr(getattr(llm, "llm_engine", None), "vllm_config", None)
    return bool(getattr(cfg, "use_v2_model_runner", False))
