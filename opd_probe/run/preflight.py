"""Preflight: read what can be known about the models without loading a weight (config.json, the safetensors
headers, tokenizers, chat templates, the machine) and turn it into findings (check.py). Used by `opd-probe check`
and, as the first step, by compare, verify and select-prompts (fail fast: an error stops the run before any
weight loads; warnings join the run's warnings). docs/check.md lists every check.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import replace
from typing import Sequence

from .. import check
from ..backends.base import ModelSpec
from ..backends.loading import (context_length_of, eos_ids_of, load_tokenizer, read_config_dict, resolve_model_path,
                                special_tokens_of, text_config_dict, turn_end_of, weights_summary)
from ..check import DeviceFacts, Finding, ModelFacts, Plan
from ..errors import InputError, ModelLoadError, ProbeError, VocabMismatchError
from ..served import is_served
from ..types import ProbePrompt

# The prompt the renderings are compared on when no prompt file is given.
EXAMPLE_PROMPT = ProbePrompt(id="example", index=0, messages=(("user", "What is 12 + 30? Answer with a number."),))
# Findings the runs report themselves, in their own words: not repeated among the run's warnings.
REPORTED_BY_THE_RUN = {"vocab"}


def plan_of(cfg, prompts_given: bool) -> Plan:
    """A Plan from a run config (ProbeConfig, SelectConfig, VerifyConfig): the fields it has are used."""
    backend = getattr(cfg, "score_backend_used", None) or getattr(cfg, "backend", "hf")
    names = ("max_new_tokens", "top_k", "vllm_logprobs", "chat_template", "template", "dtype", "device",
             "device_map", "batch_size", "trust_remote_code", "teacher_tokenizer")
    return Plan(backend=backend, prompts_given=prompts_given,
                alignment=getattr(cfg, "preflight_alignment", getattr(cfg, "alignment", None)),
                **{n: getattr(cfg, n) for n in names if hasattr(cfg, n)})


# ------------------------------------------------------------------------------------------------ reading facts
def device_facts(requested: str = "auto", backend: str = "hf") -> DeviceFacts:
    """The device a run would use and its memory: CUDA device memory when present (free and total), else RAM."""
    import torch

    vllm = importlib.util.find_spec("vllm") is not None
    cuda = torch.cuda.is_available()
    if cuda and (requested == "auto" or requested.startswith("cuda")):
        index = int(requested.split(":")[1]) if ":" in requested else 0
        free, total = torch.cuda.mem_get_info(index)
        return DeviceFacts("cuda", torch.cuda.get_device_name(index), total, free, True,
                           bool(torch.cuda.is_bf16_supported()), requested, vllm)
    total, free = _ram()
    return DeviceFacts("cpu", "CPU", total, free, cuda, True, requested, vllm)


def _ram() -> tuple[int | None, int | None]:
    try:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.total), int(vm.available)
    except ImportError:  # pragma: no cover - psutil ships with the dev environment; /proc/meminfo elsewhere
        try:
            info = dict(line.split(":", 1) for line in open("/proc/meminfo"))
            kib = lambda k: int(info[k].split()[0]) * 1024  # noqa: E731
            return kib("MemTotal"), kib("MemAvailable")
        except (OSError, KeyError, ValueError):
            return None, None


def _model_type_known(model_type: str | None) -> bool:
    if not model_type:
        return False
    from transformers import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING


def _render(tokenizer, prompts: Sequence[ProbePrompt], chat: bool) -> tuple[tuple, str | None, str | None]:
    """(token ids of every prompt, the first prompt's rendered text, why rendering failed)."""
    from ..prompts import render_prompt_ids

    if chat and not getattr(tokenizer, "chat_template", None):
        return (), None, None
    rendered = []
    try:
        for p in prompts:
            rendered.append(tuple(render_prompt_ids(tokenizer, p, use_chat_template=chat)))
    except InputError as e:
        return (), None, e.message
    first = prompts[0]
    text = tokenizer.apply_chat_template(first.as_messages(), tokenize=False, add_generation_prompt=True) if chat \
        else tokenizer.decode(render_prompt_ids(tokenizer, first, use_chat_template=False))
    return tuple(rendered), text, None


def _tokenizer_facts(path: str, spec: ModelSpec, role: str, name: str, plan: Plan,
                     prompts: Sequence[ProbePrompt]) -> dict:
    """The ModelFacts fields a model's tokenizer folder gives (its tokens, stops, template and renderings)."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "sequence longer than the maximum" is what the context check reports
    try:
        tokenizer = load_tokenizer(path, spec, role)
        rendered, text, error = _render(tokenizer, prompts, plan.chat_template)
        round_trip = _round_trip_error(tokenizer, prompts) if plan.alignment else None
    finally:
        hf_logging.set_verbosity(before)
    return dict(
        vocab=tokenizer.get_vocab(), specials=special_tokens_of(tokenizer),
        eos_ids=tuple(eos_ids_of(tokenizer, _generation_config(path))), turn_end=turn_end_of(tokenizer),
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)), rendered=rendered, example_text=text,
        tokenizer_class=type(tokenizer).__name__, render_error=f"{role} {name}: {error}" if error else None,
        round_trip_error=round_trip, tokenizer=tokenizer)


def model_facts(name: str, role: str, plan: Plan, prompts: Sequence[ProbePrompt]) -> ModelFacts:
    """Everything the checks need about one model; raises ModelLoadError when its folder, config or tokenizer
    cannot be read at all. Reads no weight."""
    spec = ModelSpec(path=name, trust_remote_code=plan.trust_remote_code)
    path = resolve_model_path(spec, role)
    raw = read_config_dict(path, spec, role)
    cfg = text_config_dict(raw)
    tok = _tokenizer_facts(path, spec, role, name, plan, prompts)
    tok.pop("tokenizer")
    return ModelFacts(name=name, role=role, path=path, config=cfg, model_type_known=_model_type_known(
        raw.get("model_type")), weights=weights_summary(path), context_length=context_length_of(_Attrs(cfg)), **tok)


def served_model_facts(name: str, student: str, plan: Plan, prompts: Sequence[ProbePrompt]) -> ModelFacts:
    """A served teacher's facts: its local tokenizer's (--teacher-tokenizer, else the student's) and what the
    serving preflight measured on the server (backends/served.py served_facts, on up to 8 rendered prompts)."""
    from ..backends.served import served_facts

    spec = ModelSpec(path=plan.teacher_tokenizer or student, trust_remote_code=plan.trust_remote_code)
    path = resolve_model_path(spec, "teacher")
    tok = _tokenizer_facts(path, spec, "teacher", name, plan, prompts)
    tokenizer = tok.pop("tokenizer")
    rendered = [list(r) for r in tok["rendered"][:8]] or [tokenizer.encode(
        prompts[0].as_messages()[-1]["content"], add_special_tokens=False)]
    texts = [tokenizer.decode(r) for r in rendered]
    sample = (rendered[0] * 2)[:48] if rendered[0] else [0, 0]  # two tokens at least: one scored position
    sf = served_facts(name, tokenizer, texts, sample, max(plan.top_k, plan.vllm_logprobs))
    ctx = None if sf.max_model_len is None else int(sf.max_model_len) - 1
    return ModelFacts(name=name, role="teacher", path=path, config={}, model_type_known=True,
                      weights={"source": "served"}, context_length=ctx, served=sf, **tok)


def _round_trip_error(tokenizer, prompts: Sequence[ProbePrompt]) -> str | None:
    """The first prompt message this tokenizer does not reproduce through encode + decode, or None."""
    from .cross import reproduces

    for p in prompts:
        for m in p.as_messages():
            if not reproduces(tokenizer, m["content"]):
                return m["content"]
    return None


class _Attrs:
    """Attribute access over a config dict (context_length_of reads attributes)."""

    def __init__(self, d: dict):
        self.__dict__.update(d)


def _generation_config(path: str):
    f = os.path.join(path, "generation_config.json")
    if not os.path.isfile(f):
        return None
    import json

    try:
        return _Attrs(json.loads(open(f, encoding="utf-8").read()))
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ the checks
def findings(student: str, teachers: Sequence[str], plan: Plan, prompts: Sequence[ProbePrompt] | None = None,
             device: DeviceFacts | None = None) -> list[Finding]:
    """Every preflight finding for the student and each teacher. A model that cannot be read at all gives one error
    finding (the others are still checked)."""
    given = list(prompts or [])
    used = given or [EXAMPLE_PROMPT]
    user = next((m["content"] for m in reversed(used[0].as_messages()) if m["role"] == "user"), "")
    plan = replace(plan, prompts_given=bool(given), example_user_text=user)
    device = device or device_facts(plan.device, plan.backend)
    out = check.run_findings(plan, device)
    labels = [f"{p.id!r} (line/row {p.index + 1})" for p in used]
    facts: dict[str, ModelFacts | None] = {}
    for name, role in [(student, "student")] + [(t, "teacher") for t in teachers]:
        if name in facts:
            continue
        try:
            facts[name] = m = (served_model_facts(name, student, plan, used) if role == "teacher" and is_served(name)
                               else model_facts(name, role, plan, used))
        except ProbeError as e:
            facts[name] = None
            out.append(Finding("error", "load", e.message, e.fix, name, None if role == "student" else name))
            continue
        found = check.model_findings(m, plan, device, labels)
        if role == "teacher":
            found = [Finding(f.level, f.code, f.message, f.fix, f.model, name, f.details) for f in found]
        out.extend(found)
    s = facts.get(student)
    for t in teachers:
        if s is not None and facts.get(t) is not None:
            tf = facts[t]
            if t == student:
                tf = replace(tf, role="teacher")
            out.extend(check.pair_findings(s, tf, plan))
    return out


_ERROR_CLASS = {"vocab": VocabMismatchError, "load": ModelLoadError, "weights": ModelLoadError,
                "config": ModelLoadError, "head": ModelLoadError, "remote-code": ModelLoadError}


def fail_fast(cfg, student: str, teachers: Sequence[str], prompts: Sequence[ProbePrompt] | None = None) -> list[str]:
    """The start of compare / verify / select-prompts: raise the first error finding as the error the run would
    have hit later (after loading weights and sampling); return the warnings, for the run's own warnings.

    A preflight that breaks on something unforeseen (not a finding: a bug, an odd tokenizer) must not stop a run
    that would work: it becomes one warning."""
    try:
        found = findings(student, teachers, plan_of(cfg, bool(prompts)), prompts)
    except ProbeError:
        raise
    except Exception as e:  # noqa: BLE001 - see the docstring
        return [f"preflight checks skipped ({type(e).__name__}: {e}); opd-probe check --debug shows why"]
    errors = [f for f in found if f.level == "error"]
    if errors:
        e = errors[0]
        more = f" (and {len(errors) - 1} more: opd-probe check lists them all)" if len(errors) > 1 else ""
        raise _ERROR_CLASS.get(e.code, InputError)(e.message + more, fix=e.fix)
    return [f"preflight: {f.message} ({f.fix})" if f.fix else f"preflight: {f.message}"
            for f in found if f.level == "warn" and f.code not in REPORTED_BY_THE_RUN]
