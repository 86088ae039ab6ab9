"""One config object for a probe run. No torch import here (keeps `opd-probe --help` fast)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import InputError

# Defaults with provenance.
DEFAULT_TOP_K = 16  # paper section 4.2; thunlp/OPD LOG_PROB_TOP_K=16
DEFAULT_TEMPERATURE = 1.0  # OPD samples the student at T=1 (paper section 3.1, thunlp/OPD rollout settings)
DEFAULT_SAMPLES = 4  # thunlp/OPD: n=4 responses per prompt
DEFAULT_DEPTH_BUCKET = 256  # design section 3: response positions [0,256), [256,512), ...
# Cost plan defaults: the paper's OPD run (paper-digest section 3b): 64 prompts x 4 responses per step, responses
# up to 7168 tokens.
DEFAULT_PLAN_BATCH = 256
DEFAULT_PLAN_MAX_TOKENS = 7168
TEMPLATE_CHOICES = ("student", "teacher")


@dataclass(frozen=True)
class ProbeConfig:
    student: str
    teachers: tuple[str, ...]
    out: str
    prompts: str | None = None
    limit: int | None = None
    samples: int = DEFAULT_SAMPLES
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    batch_size: int = 16  # sequences (prompts x samples) per generate call
    score_batch_tokens: int = 8192  # tokens per scoring forward pass (padding included)
    top_k: int = DEFAULT_TOP_K
    depth_bucket: int = DEFAULT_DEPTH_BUCKET
    chat_template: bool = True
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    backend: str = "hf"
    n_boot: int = 1000
    ci_level: float = 0.95
    reuse: str | None = None
    resume: bool = False
    overwrite: bool = False
    continuation_depths: tuple[int, ...] = ()  # teacher continues the student's prefixes cut here (needs answers)
    grad_norm: bool = False  # step-0 gradient norm of the OPD loss (one student backward pass per teacher)
    # Prompt renderings the teachers score the student's responses under: the student's chat template (what OPD
    # trainers feed the teacher by default) and/or each teacher's own (paper §5.2). Verdicts use the student's
    # when it is listed.
    template: tuple[str, ...] = ("student",)
    # Cost projection of the planned OPD run (costs.py); None = no projection.
    plan_steps: int | None = None
    plan_batch: int = DEFAULT_PLAN_BATCH  # sequences (prompts x samples) per step
    plan_max_tokens: int = DEFAULT_PLAN_MAX_TOKENS

    # Fields that may differ between an interrupted run and its --resume without changing any number.
    # (batch_size is not one: sampling batches are seeded per batch, so it changes the samples.)
    RUNTIME_ONLY = ("resume", "overwrite", "device", "score_batch_tokens", "plan_steps", "plan_batch",
                    "plan_max_tokens")

    def __post_init__(self):
        object.__setattr__(self, "teachers", tuple(self.teachers))
        object.__setattr__(self, "continuation_depths", tuple(int(d) for d in self.continuation_depths))
        tmpl = [self.template] if isinstance(self.template, str) else list(self.template)
        tmpl = [t.strip() for item in tmpl for t in str(item).split(",") if t.strip()]
        object.__setattr__(self, "template", tuple(t for t in TEMPLATE_CHOICES if t in tmpl))
        checks = [
            (self.samples >= 1, "--samples must be at least 1"),
            (self.max_new_tokens >= 1, "--max-new-tokens must be at least 1"),
            (self.temperature >= 0, "--temperature must be >= 0 (0 = greedy)"),
            (0 < self.top_p <= 1, "--top-p must be in (0, 1]"),
            (self.top_k >= 1, "--top-k must be at least 1"),
            (self.depth_bucket >= 1, "--depth-bucket must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.score_batch_tokens >= 1, "--score-batch-tokens must be at least 1"),
            (self.limit is None or self.limit >= 1, "--limit must be at least 1"),
            (self.n_boot >= 10, "n_boot must be at least 10"),
            (0 < self.ci_level < 1, "ci_level must be in (0, 1)"),
            (len(self.teachers) >= 1, "give at least one teacher"),
            (len(set(self.teachers)) == len(self.teachers),
             f"a teacher is given twice: {sorted(t for t in self.teachers if self.teachers.count(t) > 1)[:1]}"),
            (all(d >= 0 for d in self.continuation_depths), "--continuation-depths must be >= 0"),
            (not (self.resume and self.overwrite), "--resume and --overwrite exclude each other"),
            (not (self.resume and self.reuse), "--resume and --reuse exclude each other"),
            (bool(tmpl) and all(t in TEMPLATE_CHOICES for t in tmpl),
             f"--template takes student, teacher or student,teacher; got {','.join(tmpl) or 'nothing'}"),
            (self.plan_steps is None or self.plan_steps >= 1, "--plan-steps must be at least 1"),
            (self.plan_batch >= 1, "--plan-batch must be at least 1"),
            (self.plan_max_tokens >= 1, "--plan-max-tokens must be at least 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(msg, fix="correct the flag and run again (see opd-probe compare --help)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["teachers"] = list(self.teachers)
        d["continuation_depths"] = list(self.continuation_depths)
        d["template"] = list(self.template)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ProbeConfig":
        return from_known_keys(cls, d, "config")

    def numbers_key(self) -> dict:
        """The settings that determine the numbers; a resumed run must match them exactly."""
        d = self.to_dict()
        for name in self.RUNTIME_ONLY + ("out",):
            d.pop(name, None)
        return d


def from_known_keys(cls, d: dict, what: str):
    """``cls(**d)`` for a config dataclass, with unknown keys an error that lists the known ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise InputError(f"unknown {what} keys: {', '.join(unknown)}",
                         fix=f"remove them; known keys are: {', '.join(sorted(known))}")
    return cls(**d)
