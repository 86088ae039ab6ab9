"""Pure: the facts the preflight checks read (what run/preflight.py read about the models, the planned run and
the machine) and the Finding each check returns. No file, no torch, no transformers (docs/check.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .config import (DEFAULT_BACKEND, DEFAULT_BATCH_SIZE, DEFAULT_DEVICE, DEFAULT_DTYPE, DEFAULT_MAX_NEW_TOKENS,
                     DEFAULT_TEMPLATE, DEFAULT_TOP_K, DEFAULT_VLLM_LOGPROBS)

LEVELS = ("ok", "info", "warn", "error")  # info: a fact worth showing (no action needed)


@dataclass(frozen=True)
class Finding:
    """One result of a check. ``model``: the model it is about ("" = the run); ``teacher``: the pair it belongs to
    (None: the student alone, or the run)."""

    level: str
    code: str
    message: str
    fix: str | None = None
    model: str = ""
    teacher: str | None = None
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"unknown finding level {self.level!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Finding":
        return cls(**d)


@dataclass(frozen=True)
class Plan:
    """The run the checks are for (the flags of compare / verify / select-prompts / check)."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    top_k: int = DEFAULT_TOP_K
    backend: str = DEFAULT_BACKEND  # the scoring backend
    vllm_logprobs: int = DEFAULT_VLLM_LOGPROBS
    chat_template: bool = True
    template: tuple[str, ...] = (DEFAULT_TEMPLATE,)  # renderings the teachers score under
    dtype: str = DEFAULT_DTYPE
    device: str = DEFAULT_DEVICE
    device_map: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE  # sequences sampled at once: the KV cache holds this many
    trust_remote_code: bool = False
    prompts_given: bool = False  # False: the renderings are of a built-in example prompt; no context check
    example_user_text: str = ""  # the example prompt's last user message (to tell template text from the prompt)
    # compare's --alignment ("auto"/"text"): a teacher with another tokenizer is scored through text alignment
    # (a warning); None (verify, select-prompts): it is an error
    alignment: str | None = None
    teacher_tokenizer: str | None = None  # a served teacher's local tokenizer (None: the student's)


@dataclass(frozen=True)
class DeviceFacts:
    """Where the models will run: ``kind`` cpu or cuda, memory in bytes (None: unknown)."""

    kind: str
    name: str
    total_bytes: int | None = None
    available_bytes: int | None = None
    cuda_available: bool = False
    bf16_supported: bool = False
    requested: str = "auto"
    vllm_installed: bool = False


@dataclass(frozen=True)
class ModelFacts:
    """What preflight read about one model, without its weights."""

    name: str  # as the user gave it
    role: str  # "student" | "teacher"
    path: str
    config: dict  # the text model's part of config.json
    vocab: dict  # token -> id (the whole map)
    specials: dict  # bos / eos / pad -> (token, id) or None
    eos_ids: tuple[int, ...]  # ids generation stops on (generation_config + tokenizer)
    turn_end: tuple[str, int] | None  # what the chat template writes after an assistant reply
    has_chat_template: bool
    tokenizer_class: str
    model_type_known: bool  # transformers has a built-in class for config["model_type"]
    weights: dict  # loading.weights_summary
    context_length: int | None
    rendered: tuple[tuple[int, ...], ...] = ()  # token ids of the prompts under this model's own template
    example_text: str | None = None  # the example prompt (the first) rendered by this model's own template
    render_error: str | None = None  # why this model's template could not render the prompts
    # the first prompt text this tokenizer does not give back when it encodes and decodes it (a normalizer,
    # unknown tokens); a teacher with another tokenizer must reproduce the student's text (run/cross.py)
    round_trip_error: str | None = None
    # a teacher served over HTTP: what the serving preflight measured (served.py ServedFacts); its config and
    # weights are the server's, so those checks do not apply
    served: object | None = None

    @property
    def rendered_lengths(self) -> tuple[int, ...]:
        return tuple(len(r) for r in self.rendered)

    @property
    def tokenizer_len(self) -> int:
        return len(self.vocab)

    def token(self, i: int) -> str:
        for t, j in self.vocab.items():
            if j == i:
                return t
        return f"id {i}"



def finding(level, code, message, fix=None, model="", teacher=None, **details) -> Finding:
    """A Finding with its details as keyword arguments."""
    return Finding(level, code, message, fix, model, teacher, details)
