"""Stages shared by compare (probe.py), select-prompts (select.py) and verify (verify.py), and compare's
checkpointed sampling and scoring stages (rollouts and score parts saved in the out directory as they finish).

Each stage takes the settings it uses, not a whole run config: a model spec, SamplingSettings, a top-k, a token
budget. The only functions that read a run config are the two that build those settings: model_spec and
sampling_settings.
"""

from __future__ import annotations

import hashlib
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from .. import __version__, metrics
from ..backends import close_model, load_backend_model
from ..backends.base import ModelSpec, SamplingSettings, ScoreArrays, release_memory
from ..errors import InputError
from ..rundir import OutDir
from ..served import is_served
from ..types import ProbePrompt, Rollout
from ..vocab import check_vocab

PART_ROLLOUTS = 64  # rollouts per saved score part: the resume granularity of scoring


class Progress(Protocol):
    def stage(self, name: str, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def status(self, text: str) -> None: ...

    def log(self, message: str) -> None: ...


class NullProgress:
    def stage(self, name: str, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def log(self, message: str) -> None:
        pass


def sampling_seed(seed: int, first_index: int) -> int:
    """The seed of one sampling call, from the run's seed and the index of the call's first prompt: batches are
    fixed slices of the prompt list, so a resumed run samples exactly what the uninterrupted run would have."""
    return seed * 1_000_003 + first_index


def model_spec(path: str, cfg) -> ModelSpec:
    """A ModelSpec from any run config (ProbeConfig, SelectConfig, VerifyConfig): the fields it has are used. A
    served teacher renders and decodes with --teacher-tokenizer, by default the student's (docs/endpoint.md)."""
    names = ("device", "dtype", "trust_remote_code", "device_map", "top_k", "tensor_parallel_size",
             "pipeline_parallel_size", "gpu_memory_utilization", "max_model_len", "vllm_logprobs",
             "request_concurrency", "request_timeout")
    served = {"served_tokenizer": getattr(cfg, "teacher_tokenizer", None) or cfg.student} if is_served(path) else {}
    return ModelSpec(path=path, **{n: getattr(cfg, n) for n in names if hasattr(cfg, n)}, **served)


def sampling_settings(cfg, samples: int) -> SamplingSettings:
    """The SamplingSettings of a run config (ProbeConfig, SelectConfig), built once and handed to the sampling
    stage; ``samples`` per prompt is named differently per config (samples, probe_samples)."""
    return SamplingSettings(samples=samples, temperature=cfg.temperature, top_p=cfg.top_p,
                            max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, batch_size=cfg.batch_size)


def prompts_per_call(settings: SamplingSettings) -> int:
    """Prompts per generate call: batch_size sequences, ``samples`` of each prompt."""
    return max(1, settings.batch_size // settings.samples)


def free_model(model) -> None:
    close_model(model)  # a vLLM engine holds a process and GPU memory until it is shut down
    del model
    release_memory()


def check_top_k(model, k: int, role: str):
    if k > model.vocab_size:
        raise InputError(f"--top-k {k} is larger than the {role}'s vocabulary ({model.vocab_size} tokens)",
                         fix=f"use --top-k {min(16, model.vocab_size)} (the paper's default is 16)")


def load_student(backend: str, spec: ModelSpec, k: int):
    """Load the student with its check: top-k within its vocabulary."""
    s = load_backend_model(backend, spec, role="student")
    check_top_k(s, k, "student")
    return s


def load_teacher(backend: str, spec: ModelSpec, k: int, student_vocab: dict[str, int], name: str):
    """Load a teacher with its checks: the student's vocabulary, top-k within its own. Returns (teacher,
    vocabulary warnings)."""
    t = load_backend_model(backend, spec, role="teacher")
    warnings = check_vocab(student_vocab, t.vocab(), name)
    check_top_k(t, k, "teacher")
    return t, warnings


def load_pair(backend: str, student: ModelSpec, teacher: ModelSpec, k: int, progress: Progress,
              teacher_name: str | None = None):
    """Load the student and a teacher with the checks every run makes: same vocabulary, top-k within both.
    Returns (student, teacher, vocabulary warnings)."""
    progress.log(f"loading student {student.path}")
    s = load_student(backend, student, k)
    progress.log(f"loading teacher {teacher.path}")
    t, warnings = load_teacher(backend, teacher, k, s.vocab(), teacher_name or teacher.path)
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


def score_batched(model, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], k: int,
                  budget: float, query: Sequence[np.ndarray] | None = None,
                  advance: Callable[[int], None] | None = None) -> list[ScoreArrays]:
    """Score every (prompt, response) pair with ``model`` in batches of at most ``budget`` padded tokens; one
    ScoreArrays per pair, in order. ``query``: per pair, the ids whose log-probs are also wanted (the student's
    top-k at each state); ``advance`` is called with the size of every finished batch."""
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    have: dict[int, ScoreArrays] = {}
    for batch in batches_by_tokens(list(range(len(prompts))), lengths, budget):
        scored = model.score([prompts[i] for i in batch], [responses[i] for i in batch], k=k,
                             query_ids_LQ=[query[i] for i in batch] if query is not None else None)
        have.update(zip(batch, scored))
        if advance is not None:
            advance(len(batch))
    return [have[i] for i in range(len(prompts))]


def state_metrics(student: ScoreArrays, teacher: ScoreArrays) -> dict[str, np.ndarray]:
    """metrics.per_state_metrics of the same states scored by the student and a teacher."""
    return metrics.per_state_metrics(
        student.topk_ids_LK, student.topk_logprobs_LK, student.entropy_L, student.sampled_logprob_L,
        teacher.topk_ids_LK, teacher.topk_logprobs_LK, teacher.entropy_L, teacher.query_logprobs_LQ,
        teacher.sampled_logprob_L,
    )


# ------------------------------------------------------------------------------- compare's checkpointed stages
def sample_rollouts(student, prompts: list[ProbePrompt], rendered: list[list[int]], settings: SamplingSettings,
                    out: OutDir, progress: Progress) -> tuple[list[Rollout], dict]:
    """Student rollouts for every prompt; prompts already on disk (a resumed run) are not sampled again."""
    done = out.read_rollouts(samples=settings.samples)
    out.rewrite_rollouts(done)  # drop a torn line or a half-finished prompt before appending
    done_prompts = {r.prompt_index for r in done}
    per_call = prompts_per_call(settings)
    progress.stage("sampling student rollouts", len(prompts) * settings.samples)
    progress.advance(len(done))
    t0, new_tokens = time.perf_counter(), 0
    # Batches are fixed slices of the prompt list (not of the to-do list) and each is seeded by its first
    # prompt index, so a resumed run samples exactly what the uninterrupted run would have.
    for start in range(0, len(prompts), per_call):
        batch = list(range(start, min(start + per_call, len(prompts))))
        if not any(i not in done_prompts for i in batch):
            continue
        # A torn write can leave part of a batch on disk: sample the whole slice again (same seed, same
        # shapes, same draws) and keep only the missing prompts.
        gens = student.generate([rendered[i] for i in batch], settings, seed=sampling_seed(settings.seed, start))
        fresh = []
        for i, g_list in zip(batch, gens):
            if i in done_prompts:
                continue
            for j, g in enumerate(g_list):
                fresh.append(Rollout(
                    rollout_id=i * settings.samples + j, prompt_index=i, prompt_id=prompts[i].id, sample_index=j,
                    prompt_token_ids=tuple(rendered[i]), response_token_ids=g.response_ids,
                    response_text=student.decode(g.response_ids), finish_reason=g.finish_reason,
                ))
                new_tokens += len(g.response_ids)
        out.append_rollouts(fresh)
        done.extend(fresh)
        progress.advance(len(fresh))
    seconds = time.perf_counter() - t0
    done.sort(key=lambda r: r.rollout_id)
    timing = {"sampling_seconds": seconds, "sampled_tokens": new_tokens,
              "sampling_tokens_per_second": new_tokens / seconds if seconds > 0 and new_tokens else None}
    return done, timing


def _saved_scores(rollouts: list[Rollout], slug: str, out: OutDir) -> dict[int, ScoreArrays]:
    """Rollout position -> its scores, from the parts a previous (interrupted or reused) run saved."""
    pos = {r.rollout_id: i for i, r in enumerate(rollouts)}
    have: dict[int, ScoreArrays] = {}
    for first, last, arrays in out.read_score_parts(slug):
        lengths = [len(rollouts[pos[rid]].response_token_ids) for rid in range(first, last + 1)]
        if arrays["entropy_L"].shape[0] != sum(lengths):
            continue  # stale part (should not happen: parts are written atomically)
        whole = ScoreArrays(**{f: arrays.get(f) for f in ScoreArrays.FIELDS})
        start = 0
        for rid, length in zip(range(first, last + 1), lengths):
            have[pos[rid]] = whole.slice(start, start + length)
            start += length
    return have


def score_rollouts(model, rollouts: list[Rollout], k: int, budget: int, slug: str, out: OutDir,
                   progress: Progress, query: list[np.ndarray] | None = None) -> tuple[ScoreArrays, dict]:
    """Score every rollout's response positions with ``model`` (``budget``: padded tokens per forward pass), one
    saved part per PART_ROLLOUTS rollouts; parts already saved (a resumed run, --reuse) are reused. ``model``
    None: every part must be saved."""
    n = len(rollouts)
    have = _saved_scores(rollouts, slug, out)
    progress.stage(f"scoring with {slug}", n)
    progress.advance(len(have))
    t0, tokens, states = time.perf_counter(), 0, 0
    # vLLM schedules its requests itself: hand it whole parts rather than token-budgeted batches
    budget = float("inf") if getattr(model, "schedules_own_batches", False) else budget
    for p0 in range(0, n, PART_ROLLOUTS):
        part = [i for i in range(p0, min(p0 + PART_ROLLOUTS, n))]
        if all(i in have for i in part):
            continue
        if model is None:
            raise InputError(f"saved scores in {out.scores_dir(slug)} do not cover every rollout",
                             fix="re-run the original probe to completion, or drop --reuse")
        scored = score_batched(model, [rollouts[i].prompt_token_ids for i in part],
                               [rollouts[i].response_token_ids for i in part], k, budget,
                               query=[query[i] for i in part] if query is not None else None,
                               advance=progress.advance)
        have.update(zip(part, scored))
        tokens += sum(len(rollouts[i].prompt_token_ids) + len(rollouts[i].response_token_ids) for i in part)
        states += sum(len(s) for s in scored)
        joined = ScoreArrays.concat([have[i] for i in part])
        out.write_score_part(slug, rollouts[part[0]].rollout_id, rollouts[part[-1]].rollout_id,
                             {f: getattr(joined, f) for f in ScoreArrays.FIELDS})
    seconds = time.perf_counter() - t0
    timing = {"scoring_seconds": seconds, "scored_tokens": tokens, "scored_states": states,
              "scoring_tokens_per_second": tokens / seconds if seconds > 0 and tokens else None}
    return ScoreArrays.concat([have[i] for i in range(n)]), timing


def check_student_context(student, prompts: list[ProbePrompt], rendered: list[list[int]], max_new_tokens: int):
    ctx = student.context_length()
    if ctx is None:
        return
    for p, ids in zip(prompts, rendered):
        if len(ids) + max_new_tokens > ctx:
            raise InputError(
                f"prompt {p.id!r} (line/row {p.index + 1}) renders to {len(ids)} tokens; with "
                f"--max-new-tokens {max_new_tokens} that exceeds the student's context of {ctx} tokens",
                fix=f"shorten or drop that prompt, or lower --max-new-tokens to {max(ctx - len(ids), 0)} or less",
            )


def check_teacher_context(teacher, rollouts: list[Rollout], name: str):
    ctx = teacher.context_length()
    if ctx is None:
        return
    longest = max(rollouts, key=lambda r: len(r.prompt_token_ids) + len(r.response_token_ids))
    n = len(longest.prompt_token_ids) + len(longest.response_token_ids)
    if n > ctx:
        raise InputError(
            f"teacher {name} has a context of {ctx} tokens, but rollout {longest.rollout_id} "
            f"(prompt {longest.prompt_id!r}) is {n} tokens long",
            fix="lower --max-new-tokens (or drop the long prompts) so prompt + response fits the teacher",
        )
