"""One arm-seed of `verify`: an optional cold start, then OPD steps with the teacher's signal or the control's,
evaluated on the target and retention sets along the way (docs/verify.md).

An arm-seed's record (a JSON-ready dict, written to the out directory when it finishes, so `--resume` reads it
back instead of recomputing it):

    {"arm": "teacher" | "control", "seed": s, "steps": [per-step rows], "evals": [eval records],
     "cold_start": cold-start record or None, "step0": the probe at step 0 (teacher arm) or None, "seconds": ...}

An eval record: {"phase": "cold-start" | "opd", "step", "target": scores, "retain": scores or None}, where scores
are per-problem lists: "pass1" (greedy, 0/1) and "avg" (share correct of --eval-samples samples at
--eval-temperature; None when --eval-samples is 1).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from .. import metrics
from .opd_step import STEP_METRICS, control_loss, finite_mean, sft_loss, teacher_loss
from .stages import sampling_seed

CROSS_STEP0 = ("aligned", "chunk_unsupported", "shared_mass_student")  # what a cross-tokenizer verdict reads
EVAL_SEED = 7919  # one sampling seed for every evaluation: arms are compared on the same draws
FORMAT_CHECK_PROMPTS = 8  # training prompts (× 2 samples) of the cold start's format check; not tuned


@dataclass
class EvalSet:
    rendered: list
    answers: list

    def __len__(self) -> int:
        return len(self.rendered)


@dataclass
class Data:
    train: list  # rendered training prompts
    target: EvalSet | None
    retain: EvalSet | None


def score_problems(model, evalset: EvalSet, cfg) -> dict:
    """Per-problem scores of ``model``: greedy pass@1 and, with --eval-samples > 1, sampled avg@n."""
    from ..answers import is_correct
    from ..backends.base import SamplingSettings

    def run(samples: int, temperature: float) -> list[float]:
        settings = SamplingSettings(samples=samples, temperature=temperature, max_new_tokens=cfg.max_new_tokens)
        per_call = max(1, 32 // samples)
        out = []
        for start in range(0, len(evalset), per_call):
            gens = model.generate(evalset.rendered[start:start + per_call], settings, seed=EVAL_SEED + start)
            for gold, g_list in zip(evalset.answers[start:start + per_call], gens):
                out.append(float(np.mean([is_correct(model.decode(g.response_ids), gold) for g in g_list])))
        return out

    return {"pass1": run(1, 0.0), "avg": run(cfg.eval_samples, cfg.eval_temperature) if cfg.eval_samples > 1 else None}


def primary(scores: dict) -> list[float]:
    """The scores that decide: avg@n when measured, else greedy pass@1."""
    return scores["avg"] if scores.get("avg") is not None else scores["pass1"]


def summary(scores: dict, samples: int) -> dict:
    """{"accuracy", "n", "se"} of the deciding scores (the SE from the Laplace-smoothed rate, for display)."""
    s = primary(scores)
    n = len(s) * (samples if scores.get("avg") is not None else 1)
    acc = float(np.mean(s))
    smooth = (acc * n + 1) / (n + 2)
    return {"accuracy": acc, "n": n, "se": math.sqrt(smooth * (1 - smooth) / n)}


def evaluate(model, data: Data, cfg, phase: str, step: int, progress) -> dict:
    rec = {"phase": phase, "step": step, "target": score_problems(model, data.target, cfg) if data.target else None,
           "retain": score_problems(model, data.retain, cfg) if data.retain else None}
    parts = [f"{name} {np.mean(primary(rec[name])):.3f}" for name in ("target", "retain") if rec[name]]
    if parts:
        progress.log(f"[{phase} step {step}] accuracy: " + ", ".join(parts))
    return rec


class PromptOrder:
    """Shuffled, cycled training prompts, seeded: the same batches for every arm with the same seed."""

    def __init__(self, n: int, seed: int):
        self.n, self.rng, self.order = n, np.random.default_rng(seed), []

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if not self.order:
                self.order = list(self.rng.permutation(self.n))
            out.append(int(self.order.pop()))
        return out


def probe_states(student, teacher, prompts, responses, k: int) -> dict:
    """The probe's metrics at these states at top-k ``k`` (no grad, the scorers compare uses): step 0's reading."""
    from ..backends.base import ScoreArrays

    s_parts = student.score(prompts, responses, k=k)
    s = ScoreArrays.concat(s_parts)
    if getattr(teacher, "cross", False):  # another tokenizer: through text alignment (run/cross.py)
        return teacher.states(prompts, responses, set(student.eos_ids()), s.topk_ids_LK, s.topk_logprobs_LK,
                              s.entropy_L, s.sampled_logprob_L, k)
    t = ScoreArrays.concat(teacher.score(prompts, responses, k=k, query_ids_LQ=[p.topk_ids_LK for p in s_parts]))
    states = metrics.per_state_metrics(s.topk_ids_LK, s.topk_logprobs_LK, s.entropy_L, s.sampled_logprob_L,
                                       t.topk_ids_LK, t.topk_logprobs_LK, t.entropy_L, t.query_logprobs_LQ,
                                       t.sampled_logprob_L)
    return states


def format_check(student, teacher, data: Data, cfg, seed: int, bar: float) -> dict:
    """Share of the student's samples that follow the teacher's format: a sample does when the share of its states
    the teacher does not support (metrics "unsupported", at --top-k) is at most ``bar`` (the verdict's
    unsupported_nogo line)."""
    from ..backends.base import SamplingSettings

    idx = list(range(min(FORMAT_CHECK_PROMPTS, len(data.train))))
    settings = SamplingSettings(samples=2, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    gens = student.generate([data.train[i] for i in idx], settings, seed=sampling_seed(seed, 10 ** 6))
    prompts = [data.train[i] for i, g in zip(idx, gens) for _ in g]
    responses = [x.response_ids for g in gens for x in g]
    keep = [j for j, r in enumerate(responses) if len(r)]
    prompts, responses = [prompts[j] for j in keep], [responses[j] for j in keep]
    states = probe_states(student, teacher, prompts, responses, cfg.top_k)
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in responses])])
    per_sample = [float(states["unsupported"][a:b].mean()) for a, b in zip(offsets[:-1], offsets[1:])]
    return {"share": float(np.mean([u <= bar for u in per_sample])) if per_sample else 0.0,
            "overlap_ratio": float(states["overlap_ratio"].mean()),
            "overlap_mass_student": float(states["overlap_mass_student"].mean()), "samples": len(per_sample)}


def cold_start(student, teacher, data: Data, cfg, seed: int, order: PromptOrder, steps: list, progress) -> dict:
    """SFT on --cold-start teacher rollouts (arXiv 2604.13016 §5.1), epoch by epoch until the format check reaches
    --cold-start-target or --cold-start-epochs run out."""
    import torch

    from ..backends.base import SamplingSettings
    from ..thresholds import Thresholds

    bar = Thresholds().unsupported_nogo  # the verdict's own line for "the teacher supports this sample"
    before = format_check(student, teacher, data, cfg, seed, bar)
    progress.log(f"cold start: format share before {before['share']:.2f} (unsupported ≤ {bar:g})")
    sft = []
    settings = SamplingSettings(samples=1, temperature=1.0, max_new_tokens=cfg.max_new_tokens)
    while len(sft) < cfg.cold_start:
        idx = order.take(min(16, cfg.cold_start - len(sft)))
        gens = teacher.generate([data.train[i] for i in idx], settings, seed=seed + 104729 + len(sft))
        sft.extend((data.train[i], g[0].response_ids) for i, g in zip(idx, gens) if len(g[0].response_ids))
        if not any(len(g[0].response_ids) for g in gens):
            break  # a teacher that answers nothing: nothing to imitate
    params = [p for p in student.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.cold_start_lr or cfg.lr, weight_decay=cfg.weight_decay)
    per = cfg.batch_prompts * cfg.samples
    rng = np.random.default_rng(seed + 1)
    after, epochs, n_steps = before, 0, 0
    for epoch in range(cfg.cold_start_epochs):
        perm = rng.permutation(len(sft))
        for b0 in range(0, len(sft), per):
            batch = [sft[i] for i in perm[b0:b0 + per]]
            nll = sft_loss(student, [p for p, _ in batch], [r for _, r in batch])
            opt.zero_grad(set_to_none=True)
            nll.backward()
            gn = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            opt.step()
            n_steps += 1
            steps.append({"phase": "cold-start", "step": n_steps, "epoch": epoch + 1, "sft_nll": float(nll.detach()),
                          "grad_norm": gn})
        epochs = epoch + 1
        after = format_check(student, teacher, data, cfg, seed, bar)
        progress.log(f"cold start epoch {epochs}: format share {after['share']:.2f}")
        if after["share"] >= cfg.cold_start_target:
            break
    return {"rollouts": len(sft), "epochs_run": epochs, "epochs_max": cfg.cold_start_epochs, "sft_steps": n_steps,
            "unsupported_bar": bar, "target": cfg.cold_start_target, "before": before, "after": after,
            "reached": after["share"] >= cfg.cold_start_target}


def run_arm_seed(arm: str, seed: int, student, teacher, data: Data, cfg, progress, probe_k: int | None) -> dict:
    """One arm-seed from the loaded (untouched) student. ``teacher`` is None for the control arm without a cold
    start; the control's loss never receives it either way."""
    import torch

    t_start = time.perf_counter()
    torch.manual_seed(seed)
    model = student.model
    # eval mode throughout (gradients still flow): dropout would make the sampling policy and the trained policy
    # differ, and self-distillation would no longer have an exactly zero gradient. OPD trainers disable it too.
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    order = PromptOrder(len(data.train), seed)
    rec = {"arm": arm, "seed": seed, "steps": [], "evals": [], "cold_start": None, "step0": None}
    if cfg.cold_start:
        rec["cold_start"] = cold_start(student, teacher, data, cfg, seed, order, rec["steps"], progress)
        rec["evals"].append(evaluate(student, data, cfg, "cold-start", 0, progress))
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
    from ..backends.base import SamplingSettings

    sampling = SamplingSettings(samples=cfg.samples, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    progress.stage(f"OPD {arm} arm, seed {seed}", cfg.steps)
    for step in range(1, cfg.steps + 1):
        t0 = time.perf_counter()
        idx = order.take(cfg.batch_prompts)
        gens = student.generate([data.train[i] for i in idx], sampling, seed=sampling_seed(seed, step))
        prompts_b = [data.train[i] for i, g_list in zip(idx, gens) for _ in g_list]
        responses = [g.response_ids for g_list in gens for g in g_list]
        if step == 1 and arm == "teacher" and probe_k is not None:
            states = probe_states(student, teacher, prompts_b, responses, probe_k)
            rec["step0"] = ({m: finite_mean(states[m]) for m in STEP_METRICS + CROSS_STEP0 if m in states}
                            | {"top_k": probe_k})
        with autocast(student):
            if arm == "teacher":
                surrogate, row = teacher_loss(student, teacher, prompts_b, responses, cfg.top_k, cfg.loss)
            else:
                surrogate, row = control_loss(student, prompts_b, responses, cfg.top_k, cfg.loss,
                                              cfg.control_advantage)
        opt.zero_grad(set_to_none=True)
        lr_now = opt.param_groups[0]["lr"]
        if arm == "control" and cfg.loss == "topk" and cfg.top_k >= student.vocab_size:
            # The top-k control's gradient c·∇log P_K is exactly 0 at k = V (P_K = 1), but in floats it is ~1e-7
            # noise that AdamW scales up to lr-sized steps: skip the update, so the arm is the untouched student.
            grad_norm = 0.0
        else:
            surrogate.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            opt.step()
        sched.step()
        del surrogate
        row.update({"phase": "opd", "step": step, "grad_norm": grad_norm, "lr": lr_now,
                    "response_length": float(np.mean([len(r) for r in responses])),
                    "seconds": time.perf_counter() - t0})
        if rec["step0"] is not None and step == 1:
            rec["step0"]["grad_norm"] = grad_norm  # at the training k, the first update's norm
        rec["steps"].append(row)
        status = getattr(progress, "status", None)
        if status:
            status(f"{arm} seed {seed} step {step}/{cfg.steps}  loss {row['loss']:.3f}  gnorm {grad_norm:.3g}")
        progress.advance(1)
        if data.target and (step % cfg.eval_every == 0 or step == cfg.steps):
            rec["evals"].append(evaluate(student, data, cfg, "opd", step, progress))
    if not data.target and data.retain:
        rec["evals"].append(evaluate(student, data, cfg, "opd", cfg.steps, progress))
    rec["seconds"] = time.perf_counter() - t_start
    return rec


def autocast(student):
    """bf16 autocast when the student keeps float32 master weights under --dtype auto (verify_models.resolve_dtypes: CUDA
    with bf16, or a CPU where bf16 measured faster); log-softmax and the metrics stay float32 (the head's logits are
    cast to float32 before them). A no-op otherwise."""
    import contextlib

    import torch

    if getattr(student, "autocast_bf16", False):
        return torch.autocast(student.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
