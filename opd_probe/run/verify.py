"""`opd-probe verify`: a short, real on-policy distillation run, as a controlled experiment (docs/verify.md).

Arms, for the same prompts, seeds and step budget: the untouched student (the baseline, evaluated once); the teacher
arm (the reference trainer's OPD update, run/opd_step.py); with ``--control`` a teacher-free control arm whose
per-token signal is a constant negative advantage (arXiv 2608.31046). Each arm runs ``--seeds`` OPD seeds
(run/arms.py); every finished arm-seed is written to ``OUT/arms/`` so ``--resume`` continues where a run stopped,
and the control, which depends on the student, prompts, seed and loop settings only, is cached and reused across
teachers. The verdict comes from paired intervals over problems and seeds (opd_probe/experiment.py), never from a
trend.

This is a verification run, not a trainer: one device per model; docs/verify.md shows how to take a pair to verl
or TRL.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from .. import experiment as ex
from ..errors import InputError
from .opd_step import LOSSES, chunk_positions

ARMS = ("teacher", "control")
DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
# --dtype auto on CPU picks bf16 (under autocast, float32 master weights) only when a forward pass of the loaded
# student runs at least this much faster in bf16. Not tuned: a margin so timing noise cannot flip the choice.
CPU_BF16_MIN_SPEEDUP = 1.3


@dataclass(frozen=True)
class VerifyConfig:
    student: str
    teacher: str
    out: str
    prompts: str
    eval_prompts: str | None = None
    retain_prompts: str | None = None
    limit: int | None = None
    eval_limit: int | None = None
    retain_limit: int | None = None
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
    eval_samples: int = 1  # > 1: sampled avg@n decides (greedy pass@1 is always measured too)
    eval_temperature: float = 1.0  # of the avg@n samples
    seeds: int = 1
    control: bool = False
    control_advantage: float = 1.0  # c: the control's constant log-ratio (advantage −c); not tuned
    control_cache: str | None = None
    min_gain: float = 0.0
    retain_tolerance: float = 0.0
    probe_top_k: int = 16
    cold_start: int = 0  # teacher rollouts to SFT the student on before OPD
    cold_start_epochs: int = 1
    cold_start_lr: float | None = None
    cold_start_target: float = 0.8  # format share at which the cold start stops; not measured
    seed: int = 0
    chat_template: bool = True
    device: str = "auto"
    teacher_device: str | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False
    save: str | None = None
    overwrite: bool = False
    resume: bool = False

    def __post_init__(self):
        fix = "correct the flag and run again (see opd-probe verify --help)"
        checks = [
            (self.steps >= 1, "--steps must be at least 1"),
            (self.seeds >= 1, f"--seeds must be at least 1 (got {self.seeds}): it is the number of OPD seeds per arm"),
            (self.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)} (got {self.loss!r})"),
            (self.lr > 0, "--lr must be positive"),
            (self.batch_prompts >= 1, "--batch-prompts must be at least 1"),
            (self.samples >= 1, "--samples must be at least 1"),
            (self.top_k >= 1, "--top-k must be at least 1"),
            (self.probe_top_k >= 1, "--probe-top-k must be at least 1"),
            (self.max_new_tokens >= 1, "--max-new-tokens must be at least 1"),
            (self.eval_every >= 1, "--eval-every must be at least 1"),
            (self.eval_samples >= 1, "--eval-samples must be at least 1"),
            (self.cold_start >= 0, "--cold-start must be >= 0"),
            (self.cold_start_epochs >= 1, "--cold-start-epochs must be at least 1"),
            (0 < self.cold_start_target <= 1, "--cold-start-target must be in (0, 1]"),
            (self.warmup_steps >= 0, "--warmup-steps must be >= 0"),
            (self.grad_clip > 0, "--grad-clip must be positive"),
            (self.control_advantage > 0, "--control-advantage must be positive (the advantage is its negative)"),
            (self.min_gain >= 0, "--min-gain must be >= 0"),
            (self.temperature > 0, "--temperature must be positive (OPD samples the student)"),
            (self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)} (got {self.dtype!r})"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(msg, fix=fix)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VerifyConfig":
        from ..config import from_known_keys

        return from_known_keys(cls, d, "verify config")


@dataclass
class VerifyResult:
    """What `verify` observed (verify.json). ``experiment`` holds the arms' intervals and the decision;
    ``steps``/``evals``/``step0`` are the first teacher seed's (per-step rows, accuracy summaries), ``arms`` every
    arm-seed record (run/arms.py)."""

    config: dict
    student: dict
    teacher: dict
    environment: dict
    steps: list[dict]
    evals: list[dict]  # {"phase", "step", "accuracy", "n", "se"} of the first teacher seed (before = baseline)
    teacher_accuracy: dict | None
    step0: dict  # the probe's metrics on the first OPD batch at --probe-top-k, before any update
    criteria: dict  # descriptive trends of the first teacher seed, and "passed" (the decision's)
    outcome: str  # the verdict (experiment.VERDICTS)
    gap_recovery: float | None
    timings: dict = field(default_factory=dict)
    prediction: dict | None = None  # the verdict the probe's rules give on step0 (verdict.Verdict.to_dict())
    experiment: dict | None = None
    arms: dict | None = None  # {"baseline": eval record, "teacher": [arm-seed records], "control": [...]}
    notes: list = field(default_factory=list)
    tool_version: str = __version__
    created_at: str = ""
    kind: str = "verify"
    schema_version: int = 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VerifyResult":
        return cls(**d)


# ------------------------------------------------------------------------------------------------- trends
def trends(steps: list[dict]) -> dict:
    """Descriptive only (they decide nothing): the mean overlap ratio and top-k KL over the first and last fifth of
    the OPD steps of one arm-seed that logged them (the teacher arm)."""
    opd = [r for r in steps if r.get("phase") == "opd" and "overlap_ratio" in r]
    if not opd:
        return {}
    w = max(1, len(opd) // 5)
    first, last = opd[:w], opd[-w:]

    def mean(rows, key):
        return float(np.mean([r[key] for r in rows]))

    t = {"window_steps": w, "overlap_first": mean(first, "overlap_ratio"), "overlap_last": mean(last, "overlap_ratio"),
         "kl_first": mean(first, "topk_reverse_kl"), "kl_last": mean(last, "topk_reverse_kl")}
    saturated = min(t["overlap_first"], t["overlap_last"]) >= 1 - 1e-9  # k at the vocabulary: ratio 1 by construction
    t["overlap_rises"] = None if saturated else t["overlap_last"] > t["overlap_first"]
    t["kl_falls"] = t["kl_last"] < t["kl_first"]
    return t


# ------------------------------------------------------------------------------------------------- statistics
def final_scores(records: list[dict], which: str) -> np.ndarray | None:
    """(S, P) deciding scores of the last evaluation of each arm-seed on ``which`` ("target" / "retain")."""
    from .arms import primary

    rows = [primary(r["evals"][-1][which]) for r in records if r["evals"] and r["evals"][-1].get(which)]
    return np.asarray(rows, dtype=float) if rows and len(rows) == len(records) else None


def curves(baseline: dict, records: list[dict], which: str) -> list[dict]:
    """Mean deciding accuracy over seeds at each evaluation (step 0 = the untouched student), per-seed values and
    a t-interval over seeds (None with one seed)."""
    from .arms import primary

    if not baseline.get(which):
        return []
    out = [{"step": 0, "phase": "before", "mean": float(np.mean(primary(baseline[which]))), "per_seed": [],
            "low": None, "high": None}]
    for j, e in enumerate(records[0]["evals"] if records else []):
        vals = [float(np.mean(primary(r["evals"][j][which]))) for r in records
                if len(r["evals"]) > j and r["evals"][j].get(which)]
        if not vals:
            continue
        m, half = float(np.mean(vals)), None
        if len(vals) >= 2:
            half = ex.t_quantile_975(len(vals) - 1) * float(np.std(vals, ddof=1)) / np.sqrt(len(vals))
        out.append({"step": e["step"], "phase": e["phase"], "mean": m, "per_seed": vals,
                    "low": None if half is None else m - half, "high": None if half is None else m + half})
    return out


def summarise(cfg: VerifyConfig, baseline: dict, teacher: list[dict], control: list[dict],
              teacher_acc: dict | None) -> dict:
    """The experiment (pure): intervals of teacher − control, teacher − baseline, control − baseline and the
    retention change, the decision, gap recovery and the curves."""
    from .arms import primary

    def interval(a, b):
        return None if a is None or b is None else ex.paired_seed_interval(a, b)

    T, C = final_scores(teacher, "target"), final_scores(control, "target") if control else None
    B = np.asarray(primary(baseline["target"]), dtype=float) if baseline.get("target") else None
    Tr = final_scores(teacher, "retain")
    Br = np.asarray(primary(baseline["retain"]), dtype=float) if baseline.get("retain") else None
    iv = {"teacher_vs_control": interval(T, C), "teacher_vs_baseline": interval(T, B),
          "control_vs_baseline": interval(C, B), "retention_teacher_vs_baseline": interval(Tr, Br),
          "retention_control_vs_baseline": interval(final_scores(control, "retain") if control else None, Br)}
    evidence = ex.Evidence(steps=cfg.steps, problems=0 if B is None else len(B), seeds=cfg.seeds)
    decision = ex.decide(iv["teacher_vs_control"], iv["teacher_vs_baseline"], iv["retention_teacher_vs_baseline"],
                         evidence, cfg.min_gain, cfg.retain_tolerance)
    gap = {}
    if teacher_acc is not None and B is not None:
        for arm, M in (("teacher", T), ("control", C)):
            if M is not None:
                gap[arm] = ex.gap_recovery(float(M.mean()), float(B.mean()), teacher_acc["accuracy"])
    metric = "avg@%d (T=%g)" % (cfg.eval_samples, cfg.eval_temperature) if cfg.eval_samples > 1 else "greedy pass@1"
    return {
        "metric": metric, "evidence": asdict(evidence), "min_steps": ex.MIN_STEPS, "min_problems": ex.MIN_PROBLEMS,
        "intervals": {k: (v.to_dict() if v is not None else None) for k, v in iv.items()},
        "decision": decision.to_dict(), "gap_recovery": gap,
        "accuracy": {"baseline": None if B is None else float(B.mean()),
                     "teacher": None if T is None else float(T.mean()),
                     "control": None if C is None else float(C.mean()),
                     "teacher_model": None if teacher_acc is None else teacher_acc["accuracy"]},
        "curves": {arm: {"target": curves(baseline, recs, "target"), "retain": curves(baseline, recs, "retain")}
                   for arm, recs in (("teacher", teacher), ("control", control)) if recs},
    }


# ------------------------------------------------------------------------------------------------- setup
def check_devices(cfg: VerifyConfig) -> tuple[str, str]:
    """Resolved (student device, teacher device); exit 2 before anything loads when CUDA is asked for but absent."""
    import torch

    def resolve(name: str, flag: str) -> str:
        if name == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if name.startswith("cuda"):
            if not torch.cuda.is_available():
                raise InputError(f"{flag} {name} was requested but CUDA is not available on this machine "
                                 f"(torch {torch.__version__}, cuda build: {torch.version.cuda or 'none'})",
                                 fix=f"use {flag} cpu (or auto), or run on a machine with a GPU and a CUDA build "
                                     "of torch")
            index = torch.device(name).index
            if index is not None and index >= torch.cuda.device_count():
                raise InputError(f"{flag} {name}: this machine has {torch.cuda.device_count()} GPU(s)",
                                 fix=f"use {flag} cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        elif name != "cpu" and not name.startswith("mps"):
            raise InputError(f"{flag} {name!r} is not a device", fix=f"use {flag} auto, cpu, cuda or cuda:N")
        return name

    s = resolve(cfg.device, "--device")
    return s, resolve(cfg.teacher_device, "--teacher-device") if cfg.teacher_device else s


def cpu_bf16_speedup(student, tokens: int = 128, reps: int = 3) -> float:
    """Measured speed of a bf16-autocast over a float32 forward pass of the loaded student on CPU (one sequence of
    ``tokens`` random ids, best of ``reps``). A matmul alone overstates it: on this project's 2-core AMX machine a
    576 × 2304 matmul ran 3.7× faster in bf16, a whole 135M-parameter forward 1.65×, the zoo's tiny models 0.82×
    (docs/performance.md)."""
    import torch

    ids = torch.randint(0, student.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0))

    def best(autocast: bool) -> float:
        times = []
        for _ in range(reps + 1):  # the first call warms up
            t0 = time.perf_counter()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                student.model(input_ids=ids.to(student.device))
            times.append(time.perf_counter() - t0)
        return min(times[1:])

    return best(False) / best(True)


def resolve_dtypes(cfg: VerifyConfig, device: str) -> tuple[str, str, bool, dict]:
    """(student dtype, teacher dtype, bf16 autocast for the student, note) before loading. --dtype auto: on CUDA
    the student keeps float32 master weights under bf16 autocast (AdamW updates at lr 1e-6 vanish in bf16 weights)
    and the teacher loads in bf16; on CPU the student loads in float32 and ``cpu_bf16_speedup`` then decides
    (``choose_cpu_autocast``)."""
    if cfg.dtype != "auto":
        return cfg.dtype, cfg.dtype, False, {"dtype": cfg.dtype, "why": "--dtype"}
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_bf16_supported():
            return "float32", "bfloat16", True, {"dtype": "bf16 autocast", "why": "CUDA with bf16"}
        return "float32", "float32", False, {"dtype": "float32", "why": "CUDA without bf16"}
    return "float32", "float32", False, {"dtype": "float32", "why": device}


def choose_cpu_autocast(student) -> tuple[bool, dict]:
    """--dtype auto on CPU: bf16 autocast (teacher in bf16) only when the measured forward is at least
    CPU_BF16_MIN_SPEEDUP faster."""
    speedup = cpu_bf16_speedup(student)
    if speedup >= CPU_BF16_MIN_SPEEDUP:
        return True, {"dtype": "bf16 autocast", "why": f"bf16 forward measured {speedup:.2f}x faster"}
    return False, {"dtype": "float32", "why": f"bf16 forward measured {speedup:.2f}x as fast"}


def model_fingerprint(path: str) -> dict:
    """Identity of a model for the control cache: a local folder's files (name, size, mtime), or the hub id."""
    from ..zoo import resolve

    p = Path(resolve(path)).expanduser()
    if not p.is_dir():
        return {"id": path}
    return {"files": sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in p.iterdir() if f.is_file())}


CONTROL_KEYS = ("limit", "eval_limit", "retain_limit", "steps", "lr", "weight_decay", "warmup_steps", "grad_clip",
                "batch_prompts", "samples", "top_k", "loss", "temperature", "max_new_tokens", "eval_every",
                "eval_samples", "eval_temperature", "control_advantage", "chat_template", "dtype", "cold_start",
                "cold_start_epochs", "cold_start_lr", "cold_start_target")


def control_key(cfg: VerifyConfig) -> str:
    """Hash of what the control arm depends on: the student, the prompt files, the loop settings (not the seed: one
    file per seed). With --cold-start the control starts from the teacher's cold start, so the teacher joins it."""
    from .stages import file_sha256

    doc = {"student": model_fingerprint(cfg.student), "version": __version__,
           "files": {k: file_sha256(getattr(cfg, k)) if getattr(cfg, k) else None
                     for k in ("prompts", "eval_prompts", "retain_prompts")},
           "settings": {k: getattr(cfg, k) for k in CONTROL_KEYS}}
    if cfg.cold_start:
        doc["teacher"] = model_fingerprint(cfg.teacher)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def control_cache_dir(cfg: VerifyConfig) -> Path:
    """--control-cache DIR, else `.opd-probe-control/` beside --out (its parent), one folder per key."""
    root = Path(cfg.control_cache) if cfg.control_cache else Path(cfg.out).expanduser().resolve().parent / \
        ".opd-probe-control"
    return root / control_key(cfg)


def load_inputs(cfg: VerifyConfig):
    """Prompt files, checked before any model loads: (train, target eval set, retention set) as ProbePrompts."""
    from ..prompts import load_prompts

    train = load_prompts(cfg.prompts, limit=cfg.limit)

    def with_answers(path, limit, flag):
        if not path:
            return []
        if not Path(path).is_file():
            raise InputError(f"{flag} {path}: file not found",
                             fix=f"check the path; {flag} takes a .jsonl/.csv/.parquet file of prompts with 'answer'")
        rows = [p for p in load_prompts(path, limit=limit) if p.answer is not None]
        if len(rows) < 2:
            raise InputError(f"{flag} {path}: {len(rows)} prompt(s) carry an 'answer'; accuracy needs at least 2",
                             fix=f"accuracy needs reference answers: add an 'answer' field to each prompt, or drop "
                                 f"{flag}")
        return rows

    return (train, with_answers(cfg.eval_prompts, cfg.eval_limit, "--eval-prompts"),
            with_answers(cfg.retain_prompts, cfg.retain_limit, "--retain-prompts"))


def memory_check(cfg: VerifyConfig, spec_s, spec_t, devices, dtypes, prompt_tokens: int):
    """The estimate (verify_memory.py) for the planned step on the student's device; exit 2 with a setting that
    fits when it does not. Returns the check as a dict, or None when a config cannot be counted."""
    from ..backends.loading import load_config, resolve_model_path
    from . import verify_memory as vm

    def shape(spec, role):
        path = resolve_model_path(spec, role)
        config = load_config(path, spec, role)
        try:
            return vm.ModelShape.from_config(config, vm.count_parameters(config, spec.trust_remote_code))
        except Exception:  # noqa: BLE001 - a config the meta device cannot build: skip the estimate, not the run
            return None

    s, t = shape(spec_s, "student"), shape(spec_t, "teacher")
    if s is None or t is None:
        return None
    nbytes = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
    act = 2 if dtypes[2] or nbytes[dtypes[0]] == 2 else 4
    plan = vm.Plan(cfg.batch_prompts, cfg.samples, cfg.max_new_tokens, prompt_tokens)
    same = devices[0] == devices[1]
    check = vm.check_memory(s, t if same else None, plan, devices[0], nbytes[dtypes[0]], nbytes[dtypes[1]], act,
                            chunk_positions(s.vocab))
    if not check.fits:
        raise vm.refuse(check, devices[0])
    return check.to_dict()


# ------------------------------------------------------------------------------------------------- the run
def run_verify(cfg: VerifyConfig, progress=None) -> VerifyResult:
    from ..backends import load_backend_model
    from ..rundir import OutDir, atomic_write_text, dumps
    from ..thresholds import Thresholds
    from ..verdict import decide
    from ..vocab import check_vocab
    from . import arms
    from .preflight import fail_fast
    from .stages import NullProgress, check_top_k, environment, free_model, model_spec

    progress = progress or NullProgress()
    started = time.perf_counter()
    train, target, retain = load_inputs(cfg)
    pre_warnings = fail_fast(cfg, cfg.student, [cfg.teacher], train)  # configs and tokenizers only (docs/check.md)
    devices = check_devices(cfg)
    out = OutDir(cfg.out)
    arms_dir = out.path / "arms"
    if cfg.overwrite and not cfg.resume and arms_dir.is_dir():
        shutil.rmtree(arms_dir)  # our own folder (OutDir only knows its own file names)
    out.prepare(cfg.to_dict(), resume=cfg.resume, overwrite=cfg.overwrite,
                numbers_key=lambda d: {k: v for k, v in d.items() if k not in ("resume", "overwrite")})
    notes: list[str] = []
    spec_s, spec_t = model_spec(cfg.student, cfg), model_spec(cfg.teacher, cfg)
    from ..backends.loading import resolve_model_path

    dt_s, dt_t, use_autocast, dtype_note = resolve_dtypes(cfg, devices[0])
    spec_s = replace(spec_s, device=devices[0], dtype=dt_s)
    spec_t = replace(spec_t, device=devices[1], dtype=dt_t)
    state: dict = {"student": None, "teacher": None, "fresh": False, "autocast": use_autocast}

    def student():
        """The untouched student: loaded again after an arm-seed trained it."""
        if state["student"] is not None and state["fresh"]:
            return state["student"]
        if state["student"] is not None:
            free_model(state.pop("student"))
        progress.log(f"loading student {cfg.student}")
        s = load_backend_model("hf", spec_s, role="student")
        s.autocast_bf16 = state["autocast"]
        check_top_k(s, cfg.top_k, "student")
        state.update(student=s, fresh=True)
        return s

    def teacher():
        if state["teacher"] is None:
            progress.log(f"loading teacher {cfg.teacher}")
            t = load_backend_model("hf", spec_t, role="teacher")
            t.model.requires_grad_(False)
            state["warnings"] = check_vocab(student().vocab(), t.vocab(), cfg.teacher)
            check_top_k(t, cfg.top_k, "teacher")
            state["teacher"] = t
        return state["teacher"]

    # render with the tokenizer alone, so the memory estimate comes before any weights load
    from ..backends.loading import load_tokenizer
    from ..prompts import render_prompt_ids

    tok = load_tokenizer(resolve_model_path(spec_s, "student"), spec_s, "student")

    def render(rows):
        return [render_prompt_ids(tok, p, use_chat_template=cfg.chat_template) for p in rows]

    data = arms.Data(train=render(train),
                     target=arms.EvalSet(render(target), [p.answer for p in target]) if target else None,
                     retain=arms.EvalSet(render(retain), [p.answer for p in retain]) if retain else None)
    memory = memory_check(cfg, spec_s, spec_t, devices, (dt_s, dt_t, use_autocast),
                          max(len(r) for r in data.train))
    s0 = student()
    if cfg.dtype == "auto" and devices[0] == "cpu":  # measured on the loaded student, before the teacher loads
        state["autocast"], dtype_note = choose_cpu_autocast(s0)
        s0.autocast_bf16 = state["autocast"]
        if state["autocast"]:
            spec_t = replace(spec_t, dtype="bfloat16")
    V = s0.vocab_size
    probe_k = min(cfg.probe_top_k, V - 1)
    if probe_k < cfg.probe_top_k:
        notes.append(f"--probe-top-k {cfg.probe_top_k} capped to {probe_k} (below the {V}-token vocabulary: at k = V "
                     "the overlap ratio and mass are 1 by construction)")
    if cfg.control and cfg.loss == "topk" and cfg.top_k >= V:
        notes.append(f"--top-k {cfg.top_k} covers the {V}-token vocabulary: the top-k control's gradient c·∇log P_K is "
                     "exactly zero there (P_K = 1), so its updates are skipped and the control arm is the untouched student; use --loss sampled "
                     "or a smaller --top-k for an informative control (docs/verify.md)")
    cache = control_cache_dir(cfg) if cfg.control else None

    def stored(path: Path, compute, also: Path | None = None):
        """Read a finished part back (--resume, or the control cache), else compute and write it atomically."""
        for p in ([path] if cfg.resume else []) + ([also] if also else []):
            if p.exists():
                progress.log(f"reusing {p}")
                doc = json.loads(p.read_text())
                if also and not path.exists():
                    atomic_write_text(path, dumps(doc))
                return doc
        doc = compute()
        atomic_write_text(path, dumps(doc))
        if also:
            atomic_write_text(also, dumps(doc))
        return doc

    def arm_seed(arm: str, seed: int) -> dict:
        s = student()
        state["fresh"] = False
        needs_teacher = arm == "teacher" or cfg.cold_start > 0
        t = teacher() if needs_teacher else None
        return arms.run_arm_seed(arm, seed, s, t, data, cfg, progress, probe_k if arm == "teacher" else None)

    baseline = stored(arms_dir / "baseline.json",
                      lambda: arms.evaluate(student(), data, cfg, "before", 0, progress),
                      cache / "baseline.json" if cache else None)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    control_recs = [stored(arms_dir / f"control-seed{s}.json", lambda s=s: arm_seed("control", s),
                           cache / f"seed{s}.json") for s in seeds] if cfg.control else []
    teacher_acc = None
    if data.target:
        teacher_scores = stored(arms_dir / "teacher-model.json",
                                lambda: arms.score_problems(teacher(), data.target, cfg))
        teacher_acc = arms.summary(teacher_scores, cfg.eval_samples)
    teacher_recs = [stored(arms_dir / f"teacher-seed{s}.json", lambda s=s: arm_seed("teacher", s)) for s in seeds]

    experiment = summarise(cfg, baseline, teacher_recs, control_recs, teacher_acc)
    first = teacher_recs[0]
    step0 = first["step0"] or {}
    s, t = state["student"], teacher()
    prediction = decide(cfg.teacher, {k: v for k, v in step0.items() if k != "top_k"}, Thresholds(),
                        template_differs=s.info["chat_template_hash"] != t.info["chat_template_hash"])
    if cfg.save:  # the student as the last teacher arm-seed left it (the teacher arm runs last)
        if state["fresh"]:
            notes.append("--save: every teacher arm-seed was read back (--resume), so no trained student was saved")
        else:
            if len(seeds) > 1:
                notes.append(f"--save holds the student of teacher seed {seeds[-1]}")
            Path(cfg.save).mkdir(parents=True, exist_ok=True)
            s.model.save_pretrained(cfg.save, safe_serialization=True)
            s.tokenizer.save_pretrained(cfg.save)
    decision = experiment["decision"]
    evals = ([{"phase": "before", "step": 0, **arms.summary(baseline["target"], cfg.eval_samples)}]
             + [{"phase": e["phase"], "step": e["step"], **arms.summary(e["target"], cfg.eval_samples)}
                for e in first["evals"] if e.get("target")]) if data.target else []
    criteria = trends(first["steps"]) | {"passed": decision["passed"]}
    warnings = pre_warnings + list(state.get("warnings") or [])
    if warnings:
        criteria["warnings"] = warnings
    result = VerifyResult(
        config=cfg.to_dict(), student=s.info, teacher=t.info, environment=environment() | {
            "devices": list(devices), "dtype": dtype_note, "memory_estimate": memory},
        steps=first["steps"], evals=evals, teacher_accuracy=teacher_acc, step0=step0, criteria=criteria,
        outcome=decision["verdict"], gap_recovery=experiment["gap_recovery"].get("teacher"),
        timings={"total_seconds": time.perf_counter() - started,
                 "arm_seconds": {f"{r['arm']}-seed{r['seed']}": r.get("seconds") for r in control_recs + teacher_recs}},
        prediction=prediction.to_dict(), experiment=experiment,
        arms={"baseline": baseline, "teacher": teacher_recs, "control": control_recs}, notes=notes,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    atomic_write_text(out.path / "verify.json", dumps(result.to_dict()))
    import pandas as pd

    rows = [{"arm": r["arm"], "seed": r["seed"], **row} for r in teacher_recs + control_recs for row in r["steps"]]
    out.write_parquet("steps.parquet", pd.DataFrame(rows))
    return result


def recipe_evidence(out) -> str:
    """Comment lines for --print-recipe from a finished run in ``out``: the verdict, teacher − control and
    teacher − baseline with their intervals (no run there: a line saying how to get them)."""
    f = Path(out).expanduser() / "verify.json" if out else None
    if f is None or not f.is_file():
        return ("# evidence: none yet; `opd-probe verify ... --control --seeds 3 --out DIR` and then\n"
                "# `--print-recipe ... --out DIR` adds the control arm's result here\n")
    doc = json.loads(f.read_text())
    exp = doc.get("experiment") or {}
    lines = [f"# verify in {f.parent}: {doc.get('outcome')} ({exp.get('metric', '?')}, "
             f"{doc['config'].get('seeds', 1)} seed(s), {doc['config'].get('steps')} steps)"]
    for key, name in (("teacher_vs_control", "teacher − control (no-teacher control arm)"),
                      ("teacher_vs_baseline", "teacher − untouched student"),
                      ("control_vs_baseline", "control − untouched student")):
        iv = (exp.get("intervals") or {}).get(key)
        lines.append(f"#   {name}: " + ("not run" if iv is None else
                                         f"{iv['mean']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}]"))
    return "\n".join(lines) + "\n"
