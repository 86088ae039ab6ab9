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

``run_verify`` drives named stages (below); the models, devices, dtypes and memory estimate are in
run/verify_models.py, what is read back (--resume, the control cache) in run/verify_cache.py, the statistics in
run/verify_summary.py.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from .. import config as C
from ..errors import InputError
from ..served import is_served
from . import arms
from .opd_step import LOSSES
from .verify_cache import control_cache_dir, stored
from .verify_models import Models, memory_check
from .verify_summary import summarise, trends

ARMS = ("teacher", "control")
DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")


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
    steps: int = C.DEFAULT_VERIFY_STEPS
    lr: float = C.DEFAULT_VERIFY_LR
    weight_decay: float = C.DEFAULT_VERIFY_WEIGHT_DECAY
    warmup_steps: int = C.DEFAULT_VERIFY_WARMUP_STEPS
    grad_clip: float = C.DEFAULT_VERIFY_GRAD_CLIP
    batch_prompts: int = C.DEFAULT_VERIFY_BATCH_PROMPTS
    samples: int = C.DEFAULT_SAMPLES
    top_k: int = C.DEFAULT_TOP_K
    loss: str = C.DEFAULT_VERIFY_LOSS
    # a teacher with another tokenizer, or any teacher with "text": trained through text alignment at chunk level
    # (run/cross.py; the sampled loss only)
    alignment: str = C.DEFAULT_ALIGNMENT
    temperature: float = C.DEFAULT_TEMPERATURE
    max_new_tokens: int = C.DEFAULT_VERIFY_MAX_NEW_TOKENS
    eval_every: int = C.DEFAULT_VERIFY_EVAL_EVERY
    eval_samples: int = C.DEFAULT_VERIFY_EVAL_SAMPLES  # > 1: sampled avg@n decides (greedy pass@1 is always measured)
    eval_temperature: float = C.DEFAULT_VERIFY_EVAL_TEMPERATURE  # of the avg@n samples
    seeds: int = C.DEFAULT_VERIFY_SEEDS
    control: bool = False
    control_advantage: float = C.DEFAULT_VERIFY_CONTROL_ADVANTAGE  # c: the control's constant log-ratio; not tuned
    control_cache: str | None = None
    min_gain: float = C.DEFAULT_VERIFY_MIN_GAIN
    retain_tolerance: float = C.DEFAULT_VERIFY_RETAIN_TOLERANCE
    probe_top_k: int = C.DEFAULT_VERIFY_PROBE_TOP_K
    cold_start: int = C.DEFAULT_VERIFY_COLD_START  # teacher rollouts to SFT the student on before OPD
    cold_start_epochs: int = C.DEFAULT_VERIFY_COLD_START_EPOCHS
    cold_start_lr: float | None = None
    cold_start_target: float = C.DEFAULT_VERIFY_COLD_START_TARGET  # format share that stops it; not measured
    seed: int = C.DEFAULT_SEED
    chat_template: bool = True
    device: str = C.DEFAULT_DEVICE
    teacher_device: str | None = None
    dtype: str = C.DEFAULT_DTYPE
    trust_remote_code: bool = False
    save: str | None = None
    overwrite: bool = False
    resume: bool = False

    def __post_init__(self):
        if is_served(self.teacher):
            raise InputError(f"verify trains the student against the teacher in this process: a served teacher "
                             f"({self.teacher}) cannot be trained against yet",
                             fix="pass the teacher's local folder or hub id to verify; compare and check probe it "
                                 "where it is served (docs/endpoint.md)")
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
            (self.alignment in C.ALIGNMENTS, f"--alignment takes {' or '.join(C.ALIGNMENTS)}; got {self.alignment!r}"),
            (self.alignment != "text" or self.loss == "sampled",
             "--alignment text trains at chunk level, which needs --loss sampled"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(msg, fix=fix)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VerifyConfig":
        return C.from_known_keys(cls, d, "verify config")

    # verify's flags that are not settings of the run (what to print, the gate)
    CLI_ONLY = ("print_recipe", "gate", "json_out", "quiet")

    @property
    def preflight_alignment(self) -> str | None:
        """The preflight's reading of a teacher with another tokenizer: the sampled loss trains it at chunk level
        through text alignment (run/cross.py); the top-k loss needs the student's tokenizer (an error)."""
        return self.alignment if self.loss == "sampled" else None

    @classmethod
    def from_flags(cls, flags: dict) -> "VerifyConfig":
        """The config of `opd-probe verify`'s flag values (by parameter name): paths as strings, --no-chat-template
        as chat_template, no --out as "" (--print-recipe needs none). Training prompts are required."""
        if flags["prompts"] is None:
            raise InputError("verify needs training prompts",
                             fix="pass --prompts FILE (e.g. sample_prompts/math.jsonl)")
        values = C.flag_values(flags, cls.CLI_ONLY + ("out",),
                               paths=("prompts", "eval_prompts", "retain_prompts", "control_cache", "save"))
        return cls(**values, out=str(flags["out"]) if flags["out"] else "")


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


# ------------------------------------------------------------------------------------------------- setup
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


# ------------------------------------------------------------------------------------------------- the stages
@dataclass(frozen=True)
class Inputs:
    """What ``check_inputs`` checked: the prompts (ProbePrompts), the preflight's warnings, the resolved devices."""

    train: list
    target: list
    retain: list
    warnings: list[str]
    devices: tuple[str, str]


@dataclass
class Loaded:
    """What ``load_models`` set up: the models (the student loaded), the rendered prompts, the memory estimate,
    the probe's k and the notes so far."""

    models: Models
    data: arms.Data
    memory: dict | None
    probe_k: int
    notes: list[str]


@dataclass
class ArmRecords:
    """What ``run_arms`` produced or read back: the baseline's eval record, each arm's arm-seed records, the
    teacher model's own accuracy (None without --eval-prompts) and the seeds."""

    baseline: dict
    control: list[dict]
    teacher: list[dict]
    teacher_acc: dict | None
    seeds: list[int]


def check_inputs(cfg: VerifyConfig) -> Inputs:
    """The prompt files, the preflight (configs and tokenizers only, docs/check.md) and the devices: bad input exits
    2 here, before anything is written or loaded."""
    from .preflight import fail_fast
    from .verify_models import check_devices

    train, target, retain = load_inputs(cfg)
    warnings = fail_fast(cfg, cfg.student, [cfg.teacher], train)
    return Inputs(train, target, retain, warnings, check_devices(cfg))


def prepare_out(cfg: VerifyConfig):
    """The out directory (--overwrite clears an earlier run's arms/, --resume keeps them) and the control cache's
    folder (None without --control). Returns (OutDir, cache folder)."""
    from ..rundir import OutDir

    out = OutDir(cfg.out)
    arms_dir = out.path / "arms"
    if cfg.overwrite and not cfg.resume and arms_dir.is_dir():
        shutil.rmtree(arms_dir)  # our own folder (OutDir only knows its own file names)
    out.prepare(cfg.to_dict(), resume=cfg.resume, overwrite=cfg.overwrite,
                numbers_key=lambda d: {k: v for k, v in d.items() if k not in ("resume", "overwrite")})
    return out, control_cache_dir(cfg) if cfg.control else None


def render_data(cfg: VerifyConfig, inputs: Inputs, spec_s) -> arms.Data:
    """The prompts rendered with the student's tokenizer alone, so the memory estimate comes before any weights."""
    from ..backends.loading import load_tokenizer, resolve_model_path
    from ..prompts import render_prompt_ids

    tok = load_tokenizer(resolve_model_path(spec_s, "student"), spec_s, "student")

    def render(rows):
        return [render_prompt_ids(tok, p, use_chat_template=cfg.chat_template) for p in rows]

    target, retain = inputs.target, inputs.retain
    return arms.Data(train=render(inputs.train),
                     target=arms.EvalSet(render(target), [p.answer for p in target]) if target else None,
                     retain=arms.EvalSet(render(retain), [p.answer for p in retain]) if retain else None)


def vocabulary_notes(cfg: VerifyConfig, V: int) -> tuple[int, list[str]]:
    """(the probe's k, capped below the vocabulary; notes on a k the vocabulary makes uninformative)."""
    notes = []
    probe_k = min(cfg.probe_top_k, V - 1)
    if probe_k < cfg.probe_top_k:
        notes.append(f"--probe-top-k {cfg.probe_top_k} capped to {probe_k} (below the {V}-token vocabulary: at k = V "
                     "the overlap ratio and mass are 1 by construction)")
    if cfg.control and cfg.loss == "topk" and cfg.top_k >= V:
        notes.append(f"--top-k {cfg.top_k} covers the {V}-token vocabulary: the top-k control's gradient c·∇log P_K is "
                     "exactly zero there (P_K = 1), so its updates are skipped and the control arm is the untouched student; use --loss sampled "
                     "or a smaller --top-k for an informative control (docs/verify.md)")
    return probe_k, notes


def load_models(cfg: VerifyConfig, inputs: Inputs, progress) -> Loaded:
    """Render the prompts and estimate the memory (exit 2 when the step cannot fit), then load the student and
    settle --dtype auto on CPU on it; the teacher loads when an arm first needs it."""
    from .cross import verify_setup
    from .verify_models import Models

    models = Models(cfg, inputs.devices, progress)
    data = render_data(cfg, inputs, models.spec_s)
    models.cross = verify_setup(cfg, inputs, data, models.spec_s, models.spec_t)
    memory = memory_check(cfg, models.spec_s, models.spec_t, inputs.devices, models.dtypes,
                          max(len(r) for r in data.train))
    s0 = models.student()
    models.settle_cpu_dtype(s0)
    probe_k, notes = vocabulary_notes(cfg, s0.vocab_size)
    return Loaded(models, data, memory, probe_k, notes)


def run_arms(cfg: VerifyConfig, arms_dir: Path, cache: Path | None, loaded: Loaded, progress) -> ArmRecords:
    """The baseline, the control arm-seeds (cached across teachers), the teacher model's accuracy, the teacher
    arm-seeds (last, so the student they leave is the trained one), each read back when already finished."""
    models, data = loaded.models, loaded.data

    def keep(path: Path, compute, also: Path | None = None) -> dict:
        return stored(path, compute, cfg.resume, progress, also)

    def arm_seed(arm: str, seed: int) -> dict:
        s = models.trained_student()
        t = models.teacher() if arm == "teacher" or cfg.cold_start > 0 else None
        return arms.run_arm_seed(arm, seed, s, t, data, cfg, progress, loaded.probe_k if arm == "teacher" else None)

    baseline = keep(arms_dir / "baseline.json", lambda: arms.evaluate(models.student(), data, cfg, "before", 0, progress),
                    cache / "baseline.json" if cache else None)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    control = [keep(arms_dir / f"control-seed{s}.json", lambda s=s: arm_seed("control", s), cache / f"seed{s}.json")
               for s in seeds] if cfg.control else []
    teacher_acc = None
    if data.target:
        scores = keep(arms_dir / "teacher-model.json", lambda: arms.score_problems(models.teacher(), data.target, cfg))
        teacher_acc = arms.summary(scores, cfg.eval_samples)
    teacher = [keep(arms_dir / f"teacher-seed{s}.json", lambda s=s: arm_seed("teacher", s)) for s in seeds]
    return ArmRecords(baseline, control, teacher, teacher_acc, seeds)


def save_student(cfg: VerifyConfig, student, untouched: bool, seeds: list[int], notes: list[str]) -> None:
    """--save: the student as the last teacher arm-seed left it (the teacher arm runs last)."""
    if not cfg.save:
        return
    if untouched:
        notes.append("--save: every teacher arm-seed was read back (--resume), so no trained student was saved")
        return
    if len(seeds) > 1:
        notes.append(f"--save holds the student of teacher seed {seeds[-1]}")
    Path(cfg.save).mkdir(parents=True, exist_ok=True)
    student.model.save_pretrained(cfg.save, safe_serialization=True)
    student.tokenizer.save_pretrained(cfg.save)


def build_result(cfg: VerifyConfig, inputs: Inputs, loaded: Loaded, recs: ArmRecords, s, t,
                 started: float) -> VerifyResult:
    """The experiment (verify_summary.summarise), the probe's prediction on the first teacher seed's step 0, the
    first teacher seed's accuracy summaries and trends, and the whole record."""
    from ..thresholds import Thresholds
    from ..crossverdict import decide_cross
    from ..verdict import decide
    from .stages import environment

    experiment = summarise(cfg, recs.baseline, recs.teacher, recs.control, recs.teacher_acc)
    first = recs.teacher[0]
    step0 = first["step0"] or {}
    pooled0 = {k: v for k, v in step0.items() if k != "top_k"}
    if loaded.models.cross is not None:  # another tokenizer: its own rules (crossverdict.py)
        prediction = decide_cross(cfg.teacher, pooled0, Thresholds())
    else:
        prediction = decide(cfg.teacher, pooled0, Thresholds(),
                            template_differs=s.info["chat_template_hash"] != t.info["chat_template_hash"])
    decision = experiment["decision"]
    evals = ([{"phase": "before", "step": 0, **arms.summary(recs.baseline["target"], cfg.eval_samples)}]
             + [{"phase": e["phase"], "step": e["step"], **arms.summary(e["target"], cfg.eval_samples)}
                for e in first["evals"] if e.get("target")]) if loaded.data.target else []
    criteria = trends(first["steps"]) | {"passed": decision["passed"]}
    warnings = inputs.warnings + list(loaded.models.warnings)
    if warnings:
        criteria["warnings"] = warnings
    models = loaded.models
    return VerifyResult(
        config=cfg.to_dict(), student=s.info, teacher=t.info, environment=environment() | {
            "devices": list(inputs.devices), "dtype": models.dtype_note, "memory_estimate": loaded.memory},
        steps=first["steps"], evals=evals, teacher_accuracy=recs.teacher_acc, step0=step0, criteria=criteria,
        outcome=decision["verdict"], gap_recovery=experiment["gap_recovery"].get("teacher"),
        timings={"total_seconds": time.perf_counter() - started,
                 "arm_seconds": {f"{r['arm']}-seed{r['seed']}": r.get("seconds") for r in recs.control + recs.teacher}},
        prediction=prediction.to_dict(), experiment=experiment,
        arms={"baseline": recs.baseline, "teacher": recs.teacher, "control": recs.control}, notes=loaded.notes,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def write_outputs(out, result: VerifyResult, recs: ArmRecords) -> None:
    """verify.json, and steps.parquet: every arm-seed's per-step rows."""
    import pandas as pd

    from ..rundir import atomic_write_text, dumps

    atomic_write_text(out.path / "verify.json", dumps(result.to_dict()))
    rows = [{"arm": r["arm"], "seed": r["seed"], **row} for r in recs.teacher + recs.control for row in r["steps"]]
    out.write_parquet("steps.parquet", pd.DataFrame(rows))


# ------------------------------------------------------------------------------------------------- the run
def run_verify(cfg: VerifyConfig, progress=None) -> VerifyResult:
    """The run, stage by stage (docs/verify.md): inputs and devices; the out directory and the control cache; the
    models; the arms; the summary; the outputs."""
    from .stages import NullProgress

    progress = progress or NullProgress()
    started = time.perf_counter()
    inputs = check_inputs(cfg)
    out, cache = prepare_out(cfg)
    loaded = load_models(cfg, inputs, progress)
    recs = run_arms(cfg, out.path / "arms", cache, loaded, progress)
    s, t = loaded.models.current, loaded.models.teacher()  # the student as the last teacher arm-seed left it
    save_student(cfg, s, loaded.models.fresh, recs.seeds, loaded.notes)
    result = build_result(cfg, inputs, loaded, recs, s, t, started)
    write_outputs(out, result, recs)
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
