"""`opd-probe verify`: a short, real on-policy distillation run that checks the probe's prediction.

One readable loop (docs/verify.md; the reference trainer of arXiv 2604.13016, thunlp/OPD). Per step: the student samples responses at
temperature 1; the teacher scores the same token ids (the core's chunked scorer, no grad); the student is updated
with the reference trainer's gradient (thunlp/OPD: `only_stu` top-k, `student_p` weights, on-policy so the PPO
ratio is 1 and clipping is inactive):

    ∇L_t = Σ_{v ∈ TopK(p_t)} p̃_t(v) · (log p_t(v) − log q_t(v)) · ∇ log p_t(v),   p̃ = p renormalised on the top-k

with p̃ and the log-ratio detached (surrogate: sg[p̃ (log p − log q)] · log p). `--loss sampled` is the single-sample
form most trainers use: sg[log p(ŷ) − log q(ŷ)] · ∇ log p(ŷ). Token-mean over response tokens, AdamW, gradient
clipping. The reported loss is the top-k (or sampled) reverse KL itself, which is what should fall.

This is a verification run, not a trainer: it holds (tokens × vocabulary) log-probs of one batch for the backward
pass. docs/verify.md shows how to take a pair to verl or TRL.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__, metrics
from ..errors import InputError

STEP_METRICS = ("overlap_ratio", "overlap_mass_student", "overlap_mass_teacher", "entropy_gap", "topk_reverse_kl",
                "sampled_reverse_kl", "top1_agreement", "student_entropy", "teacher_entropy",
                "topk_coverage_student")  # coverage: the verdict reads it to decide whether the ratio is tail noise
LOSSES = ("topk", "sampled")


@dataclass(frozen=True)
class VerifyConfig:
    student: str
    teacher: str
    out: str
    prompts: str
    eval_prompts: str | None = None
    limit: int | None = None
    eval_limit: int | None = None
    steps: int = 50
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    batch_prompts: int = 4
    samples: int = 4
    top_k: int = 16
    loss: str = "topk"
    temperature: float = 1.0
    max_new_tokens: int = 128
    eval_every: int = 10
    eval_samples: int = 1
    eval_temperature: float = 0.0  # greedy: a deterministic accuracy, so step-to-step changes are not sampling noise
    cold_start: int = 0  # teacher rollouts to SFT the student on before OPD
    cold_start_epochs: int = 1
    cold_start_lr: float | None = None
    seed: int = 0
    chat_template: bool = True
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    save: str | None = None
    overwrite: bool = False

    def __post_init__(self):
        checks = [
            (self.steps >= 1, "--steps must be at least 1"),
            (self.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)} (got {self.loss!r})"),
            (self.lr > 0, "--lr must be positive"),
            (self.batch_prompts >= 1, "--batch-prompts must be at least 1"),
            (self.samples >= 1, "--samples must be at least 1"),
            (self.top_k >= 1, "--top-k must be at least 1"),
            (self.max_new_tokens >= 1, "--max-new-tokens must be at least 1"),
            (self.eval_every >= 1, "--eval-every must be at least 1"),
            (self.eval_samples >= 1, "--eval-samples must be at least 1"),
            (self.cold_start >= 0, "--cold-start must be >= 0"),
            (self.cold_start_epochs >= 1, "--cold-start-epochs must be at least 1"),
            (self.warmup_steps >= 0, "--warmup-steps must be >= 0"),
            (self.grad_clip > 0, "--grad-clip must be positive"),
            (self.temperature > 0, "--temperature must be positive (OPD samples the student)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(msg, fix="correct the flag and run again (see opd-probe verify --help)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VerifyConfig":
        from ..config import from_known_keys

        return from_known_keys(cls, d, "verify config")


@dataclass
class VerifyResult:
    """What `verify` observed (verify.json). ``steps`` rows hold STEP_METRICS plus loss, grad_norm, lr, ..."""

    config: dict
    student: dict
    teacher: dict
    environment: dict
    steps: list[dict]
    evals: list[dict]  # {"phase", "step", "accuracy", "n", "se"}
    teacher_accuracy: dict | None
    step0: dict  # the probe's metrics on the first OPD batch, before any update
    criteria: dict
    outcome: str
    gap_recovery: float | None
    timings: dict = field(default_factory=dict)
    prediction: dict | None = None  # the verdict the probe's rules give on step0 (verdict.Verdict.to_dict())
    tool_version: str = __version__
    created_at: str = ""
    kind: str = "verify"
    schema_version: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VerifyResult":
        return cls(**d)


# ------------------------------------------------------------------------------------------------- the loss
def opd_loss(student, teacher, prompts: list, responses: list, k: int, loss: str):
    """The OPD surrogate on one batch of student rollouts, and the probe metrics at those states.

    Returns (surrogate, row): ``surrogate.backward()`` gives the reference trainer's gradient (module docstring);
    ``row`` holds STEP_METRICS (means over the batch's states) and ``loss``, the reverse KL being minimised.
    """
    import torch

    from ..backends.base import ScoreArrays

    logp, targets = student.response_logprobs(prompts, responses)  # (N, V), with grad
    top_lp, top_ids = logp.topk(k, dim=-1)
    sampled_lp = logp.gather(-1, targets[:, None]).squeeze(-1)
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in responses])])
    ids_np = top_ids.detach().cpu().numpy()
    t = ScoreArrays.concat(teacher.score(
        prompts, responses, k=k, query_ids_LQ=[ids_np[offsets[i]:offsets[i + 1]] for i in range(len(responses))]))
    q_at_top = torch.from_numpy(t.query_logprobs_LQ).to(logp.device)
    q_sampled = torch.from_numpy(t.sampled_logprob_L).to(logp.device)
    with torch.no_grad():
        entropy = -(logp.exp() * logp).sum(-1)
    states = metrics.per_state_metrics(
        ids_np, top_lp.detach().cpu().numpy(), entropy.cpu().numpy(), sampled_lp.detach().cpu().numpy(),
        t.topk_ids_LK, t.topk_logprobs_LK, t.entropy_L, t.query_logprobs_LQ, t.sampled_logprob_L)
    row = {m: float(np.nanmean(states[m])) for m in STEP_METRICS}
    if loss == "topk":
        w = torch.softmax(top_lp.detach(), dim=-1)  # p̃: student probabilities renormalised on its top-k
        adv = top_lp.detach() - q_at_top  # log p − log q, detached
        surrogate = (w * adv * top_lp).sum(-1).mean()
        row["loss"] = row["topk_reverse_kl"]
    else:
        adv = sampled_lp.detach() - q_sampled
        surrogate = (adv * sampled_lp).mean()
        row["loss"] = row["sampled_reverse_kl"]
    return surrogate, row


# ------------------------------------------------------------------------------------------------- evaluation
def accuracy(model, rendered: list[list[int]], answers: list[str], cfg: VerifyConfig, seed: int) -> dict:
    """Answer accuracy of ``model`` on prompts with answers: eval_samples per prompt, eval_temperature."""
    from ..answers import is_correct
    from ..backends.base import SamplingSettings

    settings = SamplingSettings(samples=cfg.eval_samples, temperature=cfg.eval_temperature,
                                max_new_tokens=cfg.max_new_tokens)
    per_call = max(1, 32 // cfg.eval_samples)
    correct = n = 0
    for start in range(0, len(rendered), per_call):
        gens = model.generate(rendered[start:start + per_call], settings, seed=seed + start)
        for gold, g_list in zip(answers[start:start + per_call], gens):
            for g in g_list:
                correct += is_correct(model.decode(g.response_ids), gold)
                n += 1
    acc = correct / n
    # SE from the Laplace-smoothed rate: 0/8 correct is not "no noise"
    smooth = (correct + 1) / (n + 2)
    return {"accuracy": acc, "n": n, "se": math.sqrt(smooth * (1 - smooth) / n)}


# ------------------------------------------------------------------------------------------------- criteria
def judge(steps: list[dict], evals: list[dict], teacher_acc: dict | None) -> tuple[dict, str, float | None]:
    """Explicit success criteria over the OPD steps. Pure: rows in, verdicts out.

    - overlap_rises: mean overlap ratio over the last fifth of steps > over the first fifth (None, not applicable,
      when the ratio is 1 throughout: k at the vocabulary size)
    - kl_falls: mean top-k reverse KL over the last fifth < over the first fifth
    - accuracy (when eval prompts have answers): the change from before OPD to the end, against its noise
      (2 × the standard error of the difference of two binomial proportions): improves / flat / drops
    Outcome: gain / no-gain / regression (with accuracy), else aligned / not-aligned.
    """
    opd = [r for r in steps if r["phase"] == "opd"]
    w = max(1, len(opd) // 5)
    first, last = opd[:w], opd[-w:]

    def mean(rows, key):
        return float(np.mean([r[key] for r in rows]))

    crit = {
        "window_steps": w,
        "overlap_first": mean(first, "overlap_ratio"), "overlap_last": mean(last, "overlap_ratio"),
        "kl_first": mean(first, "topk_reverse_kl"), "kl_last": mean(last, "topk_reverse_kl"),
    }
    # with k at the vocabulary size the ratio is 1 by construction: the criterion is then not applicable (None)
    saturated = min(crit["overlap_first"], crit["overlap_last"]) >= 1 - 1e-9
    crit["overlap_rises"] = None if saturated else crit["overlap_last"] > crit["overlap_first"]
    overlap_ok = crit["overlap_rises"] is not False
    crit["kl_falls"] = crit["kl_last"] < crit["kl_first"]
    gap_recovery = None
    opd_evals = [e for e in evals if e["phase"] in ("before", "opd")]
    if len(opd_evals) >= 2:
        start = next(e for e in evals if e["phase"] == "before")
        # OPD starts from the cold-started student when there is one
        start = next((e for e in evals if e["phase"] == "cold-start"), start)
        end = evals[-1]
        delta = end["accuracy"] - start["accuracy"]
        noise = 2 * math.sqrt(start["se"] ** 2 + end["se"] ** 2)
        crit.update({"accuracy_start": start["accuracy"], "accuracy_end": end["accuracy"], "accuracy_delta": delta,
                     "accuracy_noise": noise})
        crit["accuracy"] = "improves" if delta > noise else ("drops" if delta < -noise else "flat")
        outcome = {"improves": "gain", "flat": "no-gain", "drops": "regression"}[crit["accuracy"]]
        if teacher_acc is not None:
            first_acc = next(e for e in evals if e["phase"] == "before")["accuracy"]
            gap = teacher_acc["accuracy"] - first_acc
            gap_recovery = (end["accuracy"] - first_acc) / gap if abs(gap) > 1e-9 else None
        crit["passed"] = overlap_ok and crit["kl_falls"] and crit["accuracy"] != "drops"
    else:
        outcome = "aligned" if overlap_ok and crit["kl_falls"] else "not-aligned"
        crit["passed"] = overlap_ok and crit["kl_falls"]
    return crit, outcome, gap_recovery


# ------------------------------------------------------------------------------------------------- the run
def run_verify(cfg: VerifyConfig, progress=None) -> VerifyResult:
    import torch

    from ..backends.base import SamplingSettings
    from ..prompts import load_prompts
    from ..rundir import OutDir, atomic_write_text, dumps
    from .preflight import fail_fast
    from .stages import NullProgress, environment, load_pair, model_spec, sampling_seed

    progress = progress or NullProgress()
    started = time.perf_counter()
    train = load_prompts(cfg.prompts, limit=cfg.limit)
    evalset = load_prompts(cfg.eval_prompts, limit=cfg.eval_limit) if cfg.eval_prompts else []
    evalset = [p for p in evalset if p.answer is not None] if cfg.eval_prompts else []
    if cfg.eval_prompts and not evalset:
        raise InputError(f"--eval-prompts {cfg.eval_prompts}: no prompt carries an 'answer'",
                         fix="held-out accuracy needs reference answers: add an 'answer' field, or drop --eval-prompts")
    pre_warnings = fail_fast(cfg, cfg.student, [cfg.teacher], train)  # before any weight loads (docs/check.md)
    out = OutDir(cfg.out)
    out.prepare(cfg.to_dict(), resume=False, overwrite=cfg.overwrite, numbers_key=lambda d: d)
    torch.manual_seed(cfg.seed)

    student, teacher, warnings = load_pair("hf", model_spec(cfg.student, cfg), model_spec(cfg.teacher, cfg),
                                           cfg.top_k, progress)
    warnings = pre_warnings + warnings
    teacher.model.requires_grad_(False)
    model = student.model
    # eval mode throughout (gradients still flow): dropout would make the sampling policy and the trained policy
    # differ, and self-distillation would no longer have an exactly zero gradient. OPD trainers disable it too.
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]

    rendered = [student.render(p, cfg.chat_template) for p in train]
    eval_rendered = [student.render(p, cfg.chat_template) for p in evalset]
    eval_answers = [p.answer for p in evalset]
    rng = np.random.default_rng(cfg.seed)
    order: list[int] = []

    def next_batch(n: int) -> list[int]:
        nonlocal order
        batch = []
        while len(batch) < n:
            if not order:
                order = list(rng.permutation(len(rendered)))
            batch.append(int(order.pop()))
        return batch

    steps: list[dict] = []
    evals: list[dict] = []

    def evaluate(phase: str, step: int) -> None:
        if not evalset:
            return
        e = accuracy(student, eval_rendered, eval_answers, cfg, seed=cfg.seed + 7919)
        evals.append({"phase": phase, "step": step, **e})
        progress.log(f"[{phase} step {step}] held-out accuracy {e['accuracy']:.3f} ± {e['se']:.3f} (n={e['n']})")

    teacher_acc = None
    if evalset:
        teacher_acc = accuracy(teacher, eval_rendered, eval_answers, cfg, seed=cfg.seed + 7919)
        progress.log(f"teacher held-out accuracy {teacher_acc['accuracy']:.3f} ± {teacher_acc['se']:.3f}")
    evaluate("before", 0)

    # ---- optional off-policy cold start: SFT on teacher rollouts (paper section 5.1)
    if cfg.cold_start:
        progress.stage("cold start: teacher rollouts", cfg.cold_start)
        sft = []
        settings = SamplingSettings(samples=1, temperature=1.0, max_new_tokens=cfg.max_new_tokens)
        while len(sft) < cfg.cold_start:
            idx = next_batch(min(16, cfg.cold_start - len(sft)))
            gens = teacher.generate([rendered[i] for i in idx], settings, seed=cfg.seed + 104729 + len(sft))
            sft.extend((rendered[i], g[0].response_ids) for i, g in zip(idx, gens))
            progress.advance(len(idx))
        opt = torch.optim.AdamW(params, lr=cfg.cold_start_lr or cfg.lr, weight_decay=cfg.weight_decay)
        per = cfg.batch_prompts * cfg.samples
        total = cfg.cold_start_epochs * math.ceil(len(sft) / per)
        progress.stage("cold start: SFT", total)
        sft_rng = np.random.default_rng(cfg.seed + 1)
        step = 0
        for _ in range(cfg.cold_start_epochs):
            perm = sft_rng.permutation(len(sft))
            for b0 in range(0, len(sft), per):
                batch = [sft[i] for i in perm[b0:b0 + per]]
                logp, targets = student.response_logprobs([p for p, _ in batch], [r for _, r in batch])
                nll = -logp.gather(-1, targets[:, None]).mean()
                opt.zero_grad(set_to_none=True)
                nll.backward()
                gn = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
                opt.step()
                step += 1
                steps.append({"phase": "cold-start", "step": step, "sft_nll": float(nll.detach()), "grad_norm": gn})
                progress.advance(1)
        evaluate("cold-start", 0)

    # ---- on-policy distillation
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
    sampling = SamplingSettings(samples=cfg.samples, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    progress.stage("on-policy distillation", cfg.steps)
    step0: dict = {}
    for step in range(1, cfg.steps + 1):
        t0 = time.perf_counter()
        idx = next_batch(cfg.batch_prompts)
        gens = student.generate([rendered[i] for i in idx], sampling, seed=sampling_seed(cfg.seed, step))
        prompts_b = [rendered[i] for i, g_list in zip(idx, gens) for _ in g_list]
        responses = [g.response_ids for g_list in gens for g in g_list]
        surrogate, row = opd_loss(student, teacher, prompts_b, responses, cfg.top_k, cfg.loss)
        opt.zero_grad(set_to_none=True)
        surrogate.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        lr_now = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        row.update({"phase": "opd", "step": step, "grad_norm": grad_norm, "lr": lr_now,
                    "response_length": float(np.mean([len(r) for r in responses])),
                    "seconds": time.perf_counter() - t0})
        if step == 1:
            step0 = {m: row[m] for m in STEP_METRICS} | {"grad_norm": grad_norm}
        steps.append(row)
        status = getattr(progress, "status", None)
        if status:
            status(f"step {step}/{cfg.steps}  loss {row['loss']:.3f}  overlap {row['overlap_ratio']:.3f}  "
                   f"gnorm {grad_norm:.3g}")
        progress.advance(1)
        if step % cfg.eval_every == 0 and step != cfg.steps:
            evaluate("opd", step)
        del surrogate
    evaluate("opd", cfg.steps)
    criteria, outcome, gap_recovery = judge(steps, evals, teacher_acc)
    from ..thresholds import Thresholds
    from ..verdict import decide

    # The probe's reading of the same pair from the first batch (pattern and signal rules; novelty from answers
    # needs compare's continuation probe), shown beside what OPD then did.
    prediction = decide(cfg.teacher, step0, Thresholds(),
                        template_differs=student.info["chat_template_hash"] != teacher.info["chat_template_hash"])
    if cfg.save:
        Path(cfg.save).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(cfg.save, safe_serialization=True)
        student.tokenizer.save_pretrained(cfg.save)
    result = VerifyResult(
        config=cfg.to_dict(), student=student.info, teacher=teacher.info, environment=environment(), steps=steps,
        evals=evals, teacher_accuracy=teacher_acc, step0=step0, criteria=criteria, outcome=outcome,
        gap_recovery=gap_recovery, timings={"total_seconds": time.perf_counter() - started},
        prediction=prediction.to_dict(),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if warnings:
        result.criteria["warnings"] = warnings
    atomic_write_text(out.path / "verify.json", dumps(result.to_dict()))
    import pandas as pd

    out.write_parquet("steps.parquet", pd.DataFrame(steps))
    return result
