"""The backend interface: *generate* and *score*. Depends on types/config only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a local path or hub id, and how."""

    path: str
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "auto"  # "auto" | "float32" | "bfloat16" | "float16"
    trust_remote_code: bool = False
    revision: str | None = None


@dataclass(frozen=True)
class SamplingSettings:
    samples: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0
    batch_size: int = 8  # sequences per generate call (prompts x samples are split to fit)


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
    """

    topk_ids_LK: np.ndarray  # int32
    topk_logprobs_LK: np.ndarray  # float32, sorted descending
    entropy_L: np.ndarray  # float32
    sampled_logprob_L: np.ndarray  # float32, log-prob of the response token at t
    query_logprobs_LQ: np.ndarray | None = None  # float32, log-probs of caller-given ids per position

    FIELDS = ("topk_ids_LK", "topk_logprobs_LK", "entropy_L", "sampled_logprob_L", "query_logprobs_LQ")

    def __len__(self) -> int:
        return int(self.entropy_L.shape[0])

    @classmethod
    def concat(cls, parts: Sequence["ScoreArrays"]) -> "ScoreArrays":
        def cat(name):
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
    """What the pipeline needs from a loaded model."""

    info: dict  # provenance: path, revision, architecture, vocab, hashes, dtype, device

    def vocab(self) -> dict[str, int]: ...

    def context_length(self) -> int | None: ...

    def render(self, prompt, use_chat_template: bool) -> list[int]: ...

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
