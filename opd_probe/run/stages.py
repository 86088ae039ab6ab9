"""Stages shared by compare (probe.py), select-prompts (select.py) and verify (verify.py).

Each stage takes the settings it uses, not a whole run config: a model spec, a top-k, a token budget.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from pathlib import Path
from typing import Protocol, Sequence

from .. import __version__
from ..backends import close_model, load_backend_model
from ..backends.base import ModelSpec, release_memory
from ..errors import InputError
from ..vocab import check_vocab


class Progress(Protocol):
    def stage(self, name: str, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def log(self, message: str) -> None: ...


class NullProgress:
    def stage(self, name: str, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def log(self, message: str) -> None:
        pass


def sampling_seed(seed: int, first_index: int) -> int:
    """The seed of one sampling call, from the run's seed and the index of the call's first prompt: batches are
    fixed slices of the prompt list, so a resumed run samples exactly what the uninterrupted run would have."""
    return seed * 1_000_003 + first_index


def model_spec(path: str, cfg) -> ModelSpec:
    """A ModelSpec from any run config (ProbeConfig, SelectConfig, VerifyConfig): the fields it has are used."""
    names = ("device", "dtype", "trust_remote_code", "device_map", "top_k", "tensor_parallel_size",
             "pipeline_parallel_size", "gpu_memory_utilization", "max_model_len", "vllm_logprobs")
    return ModelSpec(path=path, **{n: getattr(cfg, n) for n in names if hasattr(cfg, n)})


def free_model(model) -> None:
    close_model(model)  # a vLLM engine holds a process and GPU memory until it is shut down
    del model
    release_memory()


def check_top_k(model, k: int, role: str):
    if k > model.vocab_size:
        raise InputError(f"--top-k {k} is larger than the {role}'s vocabulary ({model.vocab_size} tokens)",
                         fix=f"use --top-k {min(16, model.vocab_size)} (the paper's default is 16)")


def load_pair(backend: str, student: ModelSpec, teacher: ModelSpec, k: int, progress: Progress,
              teacher_name: str | None = None):
    """Load the student and a teacher with the checks every run makes: same vocabulary, top-k within both.
    Returns (student, teacher, vocabulary warnings)."""
    progress.log(f"loading student {student.path}")
    s = load_backend_model(backend, student, role="student")
    check_top_k(s, k, "student")
    progress.log(f"loading teacher {teacher.path}")
    t = load_backend_model(backend, teacher, role="teacher")
    warnings = check_vocab(s.vocab(), t.vocab(), teacher_name or teacher.path)
    check_top_k(t, k, "teacher")
    return s, t, warnings


def environment() -> dict:
    import numpy
    import pandas
    import torch
    import transformers

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "opd_probe": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "cuda_available": torch.cuda.is_available(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if "vllm" in sys.modules:  # only when this run used it
        env["vllm"] = getattr(sys.modules["vllm"], "__version__", None)
    return env


def file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def batches_by_tokens(items: list[int], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Split ``items`` (sorted longest first) into batches whose padded size B * max_len stays within budget."""
    order = sorted(items, key=lambda i: -lengths[i])
    batches, cur, cur_max = [], [], 0
    for i in order:
        new_max = max(cur_max, lengths[i])
        if cur and new_max * (len(cur) + 1) > budget:
            batches.append(cur)
            cur, new_max = [], lengths[i]
        cur.append(i)
        cur_max = new_max
    if cur:
        batches.append(cur)
    return batches
