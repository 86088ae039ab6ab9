"""The backend interface: *generate* and *score*. Depends on types/config only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from ..config import (DEFAULT_BATCH_SIZE, DEFAULT_DEVICE, DEFAULT_DTYPE, DEFAULT_GPU_MEMORY_UTILIZATION,
                      DEFAULT_MAX_NEW_TOKENS, DEFAULT_PIPELINE_PARALLEL_SIZE, DEFAULT_REQUEST_CONCURRENCY,
                      DEFAULT_REQUEST_TIMEOUT, DEFAULT_SAMPLES, DEFAULT_SEED,
                      DEFAULT_TEMPERATURE, DEFAULT_TENSOR_PARALLEL_SIZE, DEFAULT_TOP_P, DEFAULT_VLLM_LOGPROBS)


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a local path or hub id, and how."""

    path: str
    device: str = DEFAULT_DEVICE  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = DEFAULT_DTYPE  # "auto" | "float32" | "bfloat16" | "float16"
    trust_remote_code: bool = False
    revision: str | None = None
    device_map: str | None = None  # transformers: accelerate placement ("auto": split over GPUs) instead of device
    # What the pipeline will ask for, so backends that size buffers when they load (vLLM's max_logprobs) can
    # check and fit it then, not after a minutes-long engine start.
    top_k: int | None = None
    # vLLM engine settings (ignored by the transformers backend)
    tensor_parallel_size: int = DEFAULT_TENSOR_PARALLEL_SIZE
    pipeline_parallel_size: int = DEFAULT_PIPELINE_PARALLEL_SIZE
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    max_model_len: int | None = None
    vllm_logprobs: int = DEFAULT_VLLM_LOGPROBS  # K': top log-probs returned per position (>= top_k)
    # a served teacher (backends/served.py): the local tokenizer it renders and decodes with, requests in flight,
    # seconds per request
    served_tokenizer: str | None = None
    request_concurrency: int = DEFAULT_REQUEST_CONCURRENCY
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample; the defaults are the probe's (config.py). The backends read samples, temperature, top_p and
    max_new_tokens; batch_size and seed describe the caller's batching and seed rule (generate takes its seed)."""

    samples: int = DEFAULT_SAMPLES
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    seed: int = DEFAULT_SEED
    batch_size: int = DEFAULT_BATCH_SIZE  # sequences per generate call (prompts x samples are split to fit)


@dataclass(frozen=True)
class Generation:
    """One sampled response: its token ids (ending with EOS when it stopped) and why it ended."""

    response_ids: tuple[int, ...]
    finish_reason: str  # "stop" (emitted EOS) | "length" (hit max_new_tokens)


@dataclass
class ScoreArrays:
    """Per-position statistics of one model over the response positions of one or more sequences.

    L = scored positions, K = top-k. Position t holds the model's next-token distribution *before* response
    token t, i.e. the state at which the student emitted it. Log-probs are full-vocabulary log-softmax at
    temperature 1 (nats); entropies are full-vocabulary.

    Exactness masks (None = every value exact, as the transformers scorer returns them): a backend that cannot
    compute a value exactly (vLLM returns top-K' log-probs, not the full distribution) stores an estimate and
    marks it False, so the pipeline can flag every metric built on it (docs/vllm.md says how each is estimated).
    """

    topk_ids_LK: np.ndarray  # int32
    topk_logprobs_LK: np.ndarray  # float32, sorted descending
    entropy_L: np.ndarray  # float32
    sampled_logprob_L: np.ndarray  # float32, log-prob of the response token at t
    query_logprobs_LQ: np.ndarray | None = None  # float32, log-probs of caller-given ids per position
    entropy_exact_L: np.ndarray | None = None  # bool; False: entropy_L is a top-K' estimate
    query_exact_LQ: np.ndarray | None = None  # bool; False: query_logprobs_LQ holds an upper bound

    FIELDS = ("topk_ids_LK", "topk_logprobs_LK", "entropy_L", "sampled_logprob_L", "query_logprobs_LQ",
              "entropy_exact_L", "query_exact_LQ")
    MASKS = {"entropy_exact_L": "entropy_L", "query_exact_LQ": "query_logprobs_LQ"}  # mask -> the values it covers

    def __len__(self) -> int:
        return int(self.entropy_L.shape[0])

    def mask(self, name: str) -> np.ndarray | None:
        """The exactness mask ``name`` in full (all True where it is None); None when its values are absent."""
        values = getattr(self, self.MASKS[name])
        if values is None:
            return None
        m = getattr(self, name)
        return np.ones(values.shape, dtype=bool) if m is None else m

    @classmethod
    def concat(cls, parts: Sequence["ScoreArrays"]) -> "ScoreArrays":
        def cat(name):
            if name in cls.MASKS:  # None means "all exact": expand only when some part is not
                if all(getattr(p, name) is None for p in parts):
                    return None
                masks = [p.mask(name) for p in parts]
                return None if any(m is None for m in masks) else np.concatenate(masks, axis=0)
            vals = [getattr(p, name) for p in parts]
            if any(v is None for v in vals):
                return None
            return np.concatenate(vals, axis=0)

        return cls(**{f: cat(f) for f in cls.FIELDS})

    def slice(self, start: int, stop: int) -> "ScoreArrays":
        return ScoreArrays(
            **{f: (None if getattr(self, f) is None else getattr(self, f)[start:stop]) for f in self.FIELDS}
        )


class Backend(Protocol):
    """What the pipeline needs from a loaded model.

    Optional: ``close()`` releases the model (a vLLM engine); ``schedules_own_batches = True`` asks the pipeline
    to hand over whole parts instead of token-budgeted batches (vLLM schedules requests itself).
    """

    info: dict  # provenance: path, revision, architecture, vocab, hashes, dtype, device, backend
    vocab_size: int  # the tokenizer's ids (output-head padding rows excluded)

    def vocab(self) -> dict[str, int]: ...

    def context_length(self) -> int | None: ...

    def render(self, prompt, use_chat_template: bool) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def generate(self, prompt_ids: Sequence[Sequence[int]], settings: SamplingSettings, seed: int) -> list[
        list[Generation]
    ]: ...

    def score(
        self,
        prompt_ids: Sequence[Sequence[int]],
        response_ids: Sequence[Sequence[int]],
        k: int,
        query_ids_LQ: Sequence[np.ndarray] | None = None,
    ) -> list[ScoreArrays]: ...


def release_memory() -> None:
    """Collect garbage and hand cached CUDA memory back, after a model was dropped, so the next one can load."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass
