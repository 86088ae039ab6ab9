"""Before `verify` loads a model: will the planned step fit in memory? (docs/verify.md "Memory").

From the model configs alone (parameters counted on the meta device, no weights read):

    weights     P_student · b_s + P_teacher · b_t               (b: bytes per parameter of the loaded dtype)
    training    P_student · (4 + 4 + 4)                           (float32 grads + AdamW's two float32 moments)
                — with fp32 master weights on CUDA the student is float32 (b_s = 4), see verify_models.resolve_dtypes
    activations tokens · layers · (8·H + 3·I) · b_act               (saved for backward, decoder; H hidden, I MLP)
    KV cache    tokens · layers · 2 · kv_heads · head_dim · b_act  (sampling)
    head        3 · min(C, R) · V · 4 (chunked) + 2 · min(C', R) · V · 4 (the teacher's scorer buffers)

tokens = batch_prompts · samples · (longest prompt + max_new_tokens); R = batch_prompts · samples · max_new_tokens
response positions; C the training chunk (opd_step.chunk_positions), C' the scorer's (hf.CHUNK_BYTES). The activation coefficient 8·H + 3·I per
token and layer is a rough count for a llama-like block (attention inputs/outputs, norms, the MLP's three
projections) under SDPA (no T² scores kept): not measured beyond benchmarks/bench_verify_memory.py. The check
refuses only when the estimate exceeds 90% of the available memory (MemAvailable on CPU, free device memory on
CUDA; OPD_PROBE_MEMORY_LIMIT=BYTES overrides it, which the tests use).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from ..errors import InputError

GiB = 2 ** 30
HEADROOM = 0.9  # not measured: leave 10% for the allocator, Python and the tokenizer
SCORER_CHUNK_BYTES = 512 * 2 ** 20  # hf.CHUNK_BYTES: the scorer's logits buffer (and a scratch buffer as large)


@dataclass(frozen=True)
class ModelShape:
    params: int
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int
    vocab: int

    @classmethod
    def from_config(cls, config, params: int) -> "ModelShape":
        c = getattr(config, "get_text_config", lambda: config)()
        hidden = int(getattr(c, "hidden_size", 0) or getattr(c, "n_embd", 0))
        heads = int(getattr(c, "num_attention_heads", 0) or getattr(c, "n_head", 1) or 1)
        kv = int(getattr(c, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(c, "head_dim", None) or hidden // heads)
        return cls(params=params, layers=int(getattr(c, "num_hidden_layers", 0) or getattr(c, "n_layer", 0)),
                   hidden=hidden, intermediate=int(getattr(c, "intermediate_size", None) or 4 * hidden),
                   kv_dim=kv * head_dim, vocab=int(getattr(c, "vocab_size", 0)))


def count_parameters(config, trust_remote_code: bool = False) -> int:
    """Parameters of a model built from ``config`` on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return int(sum(p.numel() for p in model.parameters()))


@dataclass(frozen=True)
class Plan:
    batch_prompts: int
    samples: int
    max_new_tokens: int
    prompt_tokens: int  # the longest rendered training prompt


def estimate_bytes(student: ModelShape, teacher: ModelShape | None, plan: Plan, student_bytes: int,
                   teacher_bytes: int, act_bytes: int, head_chunk: int) -> dict:
    """Each part of the estimate, in bytes (module docstring). ``teacher=None``: the teacher lives elsewhere."""
    tokens = plan.batch_prompts * plan.samples * (plan.prompt_tokens + plan.max_new_tokens)
    resp = plan.batch_prompts * plan.samples * plan.max_new_tokens
    scorer_rows = min(resp, max(1, SCORER_CHUNK_BYTES // (4 * student.vocab * 2)))
    parts = {
        "weights": student.params * student_bytes + (teacher.params * teacher_bytes if teacher else 0),
        "grads_and_adamw": student.params * 12,
        "activations": tokens * student.layers * (8 * student.hidden + 3 * student.intermediate) * act_bytes,
        "kv_cache": tokens * student.layers * 2 * student.kv_dim * act_bytes,
        "head": 3 * min(head_chunk, resp) * student.vocab * 4 + (2 * scorer_rows * student.vocab * 4 if teacher else 0),
    }
    parts["total"] = sum(parts.values())
    return parts


def available_bytes(device: str) -> int | None:
    """Memory the run may use: OPD_PROBE_MEMORY_LIMIT, else free CUDA memory, else MemAvailable; None if unknown."""
    forced = os.environ.get("OPD_PROBE_MEMORY_LIMIT")
    if forced:
        try:
            return int(float(forced))
        except ValueError as e:
            raise InputError(f"OPD_PROBE_MEMORY_LIMIT={forced!r} is not a number of bytes",
                             fix="set it to bytes, e.g. OPD_PROBE_MEMORY_LIMIT=8e9, or unset it") from e
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class MemoryCheck:
    estimate: dict
    available: int | None
    fits: bool
    suggestion: dict | None  # a smaller Plan (as a dict) that fits, when the planned one does not

    def to_dict(self) -> dict:
        return asdict(self)


def smaller_plans(plan: Plan):
    """Smaller settings in the order a user would give them up: samples, then prompts per step, then length."""
    b, n, t = plan.batch_prompts, plan.samples, plan.max_new_tokens
    lengths = [t] + [x for x in (t // 2 ** i for i in range(1, 20)) if x >= 16]
    for tt in lengths:
        for bb in range(b, 0, -1):
            for nn in range(n, 0, -1):
                if (bb, nn, tt) != (plan.batch_prompts, plan.samples, plan.max_new_tokens):
                    yield Plan(bb, nn, tt, plan.prompt_tokens)


def check_memory(student: ModelShape, teacher: ModelShape | None, plan: Plan, device: str, student_bytes: int,
                 teacher_bytes: int, act_bytes: int, head_chunk: int) -> MemoryCheck:
    def est(p):
        return estimate_bytes(student, teacher, p, student_bytes, teacher_bytes, act_bytes, head_chunk)

    planned = est(plan)
    avail = available_bytes(device)
    if avail is None or planned["total"] <= HEADROOM * avail:
        return MemoryCheck(planned, avail, True, None)
    fit = next((p for p in smaller_plans(plan) if est(p)["total"] <= HEADROOM * avail), None)
    return MemoryCheck(planned, avail, False, None if fit is None else asdict(fit))


def refuse(check: MemoryCheck, device: str) -> InputError:
    e = check.estimate
    what = (f"the planned verify step needs about {e['total'] / GiB:.1f} GiB on {device} (weights "
            f"{e['weights'] / GiB:.1f}, grads + AdamW {e['grads_and_adamw'] / GiB:.1f}, activations "
            f"{e['activations'] / GiB:.1f}, KV cache {e['kv_cache'] / GiB:.1f}, head {e['head'] / GiB:.2f}) but "
            f"{check.available / GiB:.1f} GiB is available")
    s = check.suggestion
    if s is None:
        fix = ("even one prompt with one sample does not fit: use a GPU (--device cuda), put the teacher on another "
               "device (--teacher-device), or a smaller student")
    else:
        fix = (f"--batch-prompts {s['batch_prompts']} --samples {s['samples']} --max-new-tokens "
               f"{s['max_new_tokens']} fits the estimate; or --teacher-device / a GPU")
    return InputError(what, fix=fix)
