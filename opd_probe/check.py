"""Pure: preflight findings from facts already read about the models (configs, tokenizers, chat templates, weight
headers) and the planned run. No file, no torch, no transformers: run/preflight.py reads the facts.

Everything here is known before any weight is loaded, so `opd-probe check` answers in seconds and `compare`,
`verify` and `select-prompts` stop before minutes of sampling when a pair cannot work (docs/check.md).

This module: each model's config, weights, tokens and template, and the pair checks (id map, stop tokens,
renderings, the teacher's context). The facts and Finding are in check_facts.py; the machine, memory and the vLLM
log-prob limit in check_resources.py (both re-exported here, so ``check.Plan``, ``check.memory_estimate`` work).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from . import templates
from .check_facts import LEVELS, DeviceFacts, Finding, ModelFacts, Plan
from .check_facts import finding as _f
from .check_resources import (DTYPE_ALIASES, DTYPE_BYTES, MEMORY_TIGHT, VLLM_DEFAULT_MAX_LOGPROBS, GiB,
                              kv_bytes_per_token, logprob_findings, memory_estimate, memory_findings, parameters_of,
                              resolve_dtype, run_findings)
from .vocab import CROSS_FIX, SAME_TOKENIZER_FIX, vocab_diff

__all__ = [  # the checks' whole interface, whichever of the three modules holds each part
    "LEVELS", "DeviceFacts", "Finding", "ModelFacts", "Plan",
    "DTYPE_ALIASES", "DTYPE_BYTES", "GiB", "MEMORY_TIGHT", "VLLM_DEFAULT_MAX_LOGPROBS", "kv_bytes_per_token",
    "logprob_findings", "memory_estimate", "memory_findings", "parameters_of", "resolve_dtype", "run_findings",
    "model_findings", "pair_findings", "vocab_finding", "stop_findings", "rendering_findings",
    "teacher_context_findings", "worst", "exit_code",
]


# ------------------------------------------------------------------------------------------------ one model
def model_findings(m: ModelFacts, plan: Plan, device: DeviceFacts, prompt_labels: Sequence[str] = ()) -> list[Finding]:
    """Findings about one model on its own: config, weights, tokenizer, template, context, top-k, memory."""
    if m.served is not None:  # config, weights and memory are the server's: the serving preflight instead
        from .served import serving_findings

        return _token_findings(m, plan) + _top_k_findings(m, plan) + serving_findings(
            m.served, plan.top_k, max(plan.top_k, plan.vllm_logprobs))
    out: list[Finding] = []
    add = lambda level, code, msg, fix=None, **d: out.append(_f(level, code, msg, fix, m.name, None, **d))  # noqa: E731
    cfg = m.config
    if not cfg.get("model_type"):
        add("error", "config", f"{m.role} {m.name}: config.json has no model_type",
            "add the architecture's model_type to config.json (e.g. \"llama\", \"qwen2\"), as save_pretrained "
            "writes it")
    auto_map = cfg.get("auto_map") or {}
    if auto_map and not plan.trust_remote_code:
        if m.model_type_known:
            add("warn", "remote-code", f"{m.role} {m.name} ships its own code (auto_map: {', '.join(auto_map)}); "
                f"without --trust-remote-code transformers uses its built-in {cfg.get('model_type')} class",
                "check the built-in class is the model's, or pass --trust-remote-code after reading the repo's code")
        else:
            add("error", "remote-code", f"{m.role} {m.name} needs its own code (model_type "
                f"{cfg.get('model_type')!r} is not built into transformers; auto_map: {', '.join(auto_map)})",
                "pass --trust-remote-code (after reading the repo's code)")
    elif auto_map:
        add("info", "remote-code", f"{m.role} {m.name} runs the repo's own code (--trust-remote-code)")
    elif cfg.get("model_type") and not m.model_type_known:
        add("error", "config", f"{m.role} {m.name}: model_type {cfg.get('model_type')!r} is not known to this "
            "transformers version", "upgrade transformers, or pass --trust-remote-code for a repo with its own code")
    w = m.weights
    if w.get("problem"):
        add("error", "weights", f"{m.role} {m.name}: {w['problem']}",
            "re-download or re-save the model (save_pretrained(..., safe_serialization=True)); a corrupt or "
            "half-copied file cannot load")
    head = cfg.get("vocab_size")
    if isinstance(head, int):
        if head < m.tokenizer_len:
            add("error", "head", f"{m.role} {m.name}: output head has {head} rows but the tokenizer has "
                f"{m.tokenizer_len} tokens", "check that the tokenizer in the model folder belongs to this model")
        elif head > m.tokenizer_len:
            add("ok", "head", f"padded output head: {head} rows for {m.tokenizer_len} tokens (padding rows are "
                "ignored)")
    out.extend(_token_findings(m, plan))
    out.extend(_top_k_findings(m, plan))
    if m.role == "student":
        out.extend(_student_context(m, plan, prompt_labels))
    out.extend(memory_findings(m, plan, device))
    return out


def _top_k_findings(m: ModelFacts, plan: Plan) -> list[Finding]:
    if plan.top_k <= m.tokenizer_len:
        return []
    return [_f("error", "top-k", f"--top-k {plan.top_k} is larger than the {m.role}'s vocabulary ({m.tokenizer_len} "
               "tokens)", f"use --top-k {min(16, m.tokenizer_len)} (the paper's default is 16)", m.name)]


def _token_findings(m: ModelFacts, plan: Plan) -> list[Finding]:
    out = []
    sp = m.specials
    desc = ", ".join(f"{k} {v[0]!r} ({v[1]})" if v else f"{k} none" for k, v in sp.items())
    turn = f"; its chat template ends a turn with {m.turn_end[0]!r} ({m.turn_end[1]})" if m.turn_end else (
        "; its chat template writes nothing after a reply" if m.has_chat_template else "; no chat template")
    out.append(_f("info", "tokens", f"{desc}; stops on ids {list(m.eos_ids)}{turn}", None, m.name,
                  bos=sp.get("bos"), eos=sp.get("eos"), pad=sp.get("pad"), eos_ids=list(m.eos_ids),
                  turn_end=m.turn_end))
    if not m.eos_ids:
        out.append(_f("warn", "eos", f"{m.role} {m.name} has no eos token: rollouts never stop before "
                      "--max-new-tokens", "set eos_token in tokenizer_config.json or eos_token_id in "
                      "generation_config.json", m.name))
    if m.role == "student" and plan.chat_template and m.turn_end and m.turn_end[1] not in m.eos_ids:
        out.append(_f("warn", "student-turn-end", f"the student's template ends a turn with {m.turn_end[0]!r} "
                      f"(id {m.turn_end[1]}), which is not one of its stop ids {list(m.eos_ids)}: a rollout that "
                      "ends its turn keeps sampling", f"add {m.turn_end[1]} to eos_token_id in the student's "
                      "generation_config.json", m.name))
    if plan.chat_template and not m.has_chat_template:
        if m.role == "student":
            out.append(_f("error", "template", f"the student's tokenizer ({m.name}) has no chat template, so chat "
                          "prompts cannot be rendered", "pass --no-chat-template (normal for base models) to feed "
                          "the prompt text as-is", m.name))
        elif "teacher" in plan.template:
            level = "error" if templates.primary_template(plan.template) == "teacher" else "warn"
            out.append(_f(level, "template", f"--template teacher: teacher {m.name} has no chat template, so its "
                          "own rendering of the prompts does not exist", "use --template student, or set a "
                          "chat_template in the teacher's tokenizer_config.json", m.name))
        else:
            out.append(_f("info", "template", f"teacher {m.name} has no chat template: it scores the student's "
                          "rendering (normal for a base teacher)", None, m.name))
    elif m.render_error and (m.role == "student" or "teacher" in plan.template):
        out.append(_f("error", "template", m.render_error, "adjust the prompt's messages to what the template "
                      "accepts, or pass --no-chat-template", m.name))
    return out


def _longest(lengths: Sequence[int]) -> int:
    return max(range(len(lengths)), key=lambda i: lengths[i])


def _student_context(m: ModelFacts, plan: Plan, labels: Sequence[str]) -> list[Finding]:
    ctx, n = m.context_length, m.rendered_lengths
    if ctx is None or not plan.prompts_given or not n:
        return []
    i = _longest(n)
    label = labels[i] if i < len(labels) else f"#{i}"
    if n[i] + plan.max_new_tokens > ctx:
        return [_f("error", "context", f"prompt {label} renders to {n[i]} tokens; with --max-new-tokens "
                   f"{plan.max_new_tokens} that exceeds the student's context of {ctx} tokens",
                   f"shorten or drop that prompt, or lower --max-new-tokens to {max(ctx - n[i], 0)} or less",
                   m.name, longest_prompt=n[i], context=ctx)]
    return [_f("ok", "context", f"longest prompt {n[i]} + --max-new-tokens {plan.max_new_tokens} = "
               f"{n[i] + plan.max_new_tokens} tokens fits the student's context of {ctx}", None, m.name)]


# ------------------------------------------------------------------------------------------------ a pair
def pair_findings(s: ModelFacts, t: ModelFacts, plan: Plan) -> list[Finding]:
    """Findings about a student/teacher pair: the id map, stop tokens, renderings, the teacher's context, top-k
    against the teacher's log-prob limit."""
    vocab = vocab_finding(s, t, plan)
    out = [vocab]
    if vocab.details.get("cross_tokenizer"):
        if t.round_trip_error is not None:
            out.append(_f("error", "round-trip", f"teacher {t.name}'s tokenizer does not give back the text it "
                          f"encodes ({t.round_trip_error[:60]!r}): its normalizer or unknown tokens change the text, "
                          "so it cannot be aligned with the student's tokens", CROSS_FIX))
        out.append(_f("info", "rendering", f"teacher {t.name} reads the prompts under its own chat template (the "
                      "plain text without one) and its own tokenization of the student's text (another tokenizer)"))
        out.extend(teacher_context_findings(s, t, replace(plan, template=("teacher",))))
    else:
        out.extend(stop_findings(s, t, plan))
        out.extend(rendering_findings(s, t, plan, same_map=vocab.level != "error"))
        out.extend(teacher_context_findings(s, t, plan))
    out.extend(logprob_findings(t, plan))
    return [Finding(f.level, f.code, f.message, f.fix, f.model or t.name, t.name, f.details) for f in out]


def vocab_finding(s: ModelFacts, t: ModelFacts, plan: Plan | None = None) -> Finding:
    """The whole token -> id map over the student's ids (not only the size): OPD feeds the student's ids to the
    teacher. A padded output head is not a difference; tokens only the teacher has are a warning. Another map is an
    error, except where ``plan.alignment`` is set (check, compare, verify --loss sampled), which read such a teacher
    through text alignment (a warning: docs/cross-tokenizer.md)."""
    differ, extra = vocab_diff(s.vocab, t.vocab)
    if differ and plan is not None and plan.alignment:
        return _f("warn", "vocab", f"teacher {t.name} has another tokenizer ({len(differ)} of the student's "
                  f"{len(s.vocab)} ids differ; teacher has {len(t.vocab)} tokens): it is scored on its own "
                  "tokenization of the student's text (compare: chunk-level metrics exact, position-level ones "
                  "approximate; verify --loss sampled: chunk-level OPD; verdict thresholds not validated); "
                  "select-prompts and verify's top-k loss need the student's tokenizer",
                  "fine for compare and verify --loss sampled; to train, use a trainer that aligns tokenizations "
                  "(TRL GOLD) or pick a teacher from the student's model family", differing=len(differ),
                  cross_tokenizer=True)
    if differ:
        s_by, t_by = {i: x for x, i in s.vocab.items()}, {i: x for x, i in t.vocab.items()}
        first = differ[0]
        theirs = repr(t_by[first]) if first in t_by else "no token"
        shown = ", ".join(f"{i}: {s_by[i]!r} vs {t_by[i]!r}" if i in t_by else f"{i}: {s_by[i]!r} vs none"
                          for i in differ[:5])
        return _f("error", "vocab", f"student and teacher vocabularies differ at id {first}: student "
                  f"{s_by[first]!r} vs teacher {theirs} (teacher {t.name}; {len(differ)} of the student's "
                  f"{len(s.vocab)} ids differ, teacher has {len(t.vocab)} tokens; first: {shown})",
                  SAME_TOKENIZER_FIX, differing=len(differ), first_ids=differ[:20])
    if extra:
        return _f("warn", "vocab", f"teacher {t.name} has {len(extra)} token(s) the student lacks (ids "
                  f"{extra[0]}..{extra[-1]}); the student can never emit them, so teacher mass on them counts as "
                  "disagreement", "fine if they are added special tokens; otherwise pick a teacher with the "
                  "student's tokenizer", extra=len(extra))
    return _f("ok", "vocab", f"same token -> id map ({len(s.vocab)} tokens)")


def stop_findings(s: ModelFacts, t: ModelFacts, plan: Plan) -> list[Finding]:
    """Does the student's stop token mean "stop" to the teacher? The teacher rewards stopping only with the token
    it ends its own turns with (its template's end of turn; its eos without a template). A Base student that
    stops on <|endoftext|> under an Instruct teacher that ends turns with <|im_end|> is never rewarded for stopping:
    lengths grow and the student repeats (modelscope/ms-swift#9526, docs/check.md)."""
    teacher_stop = (t.turn_end if plan.chat_template and t.turn_end else t.specials.get("eos"))
    if teacher_stop is None:
        return [_f("warn", "stop", f"teacher {t.name} has neither an end-of-turn token nor an eos token",
                   "set the teacher's eos_token; without one its stop reward cannot be read")]
    if teacher_stop[1] in s.eos_ids:
        return [_f("ok", "stop", f"the student stops on {teacher_stop[0]!r} (id {teacher_stop[1]}), the token the "
                   "teacher ends its turns with")]
    s_stop = ", ".join(f"{s.token(i)!r} ({i})" for i in s.eos_ids) or "nothing"
    return [_f("warn", "stop", f"stop tokens disagree: the student stops on {s_stop}; the teacher ends its turns "
               f"with {teacher_stop[0]!r} (id {teacher_stop[1]}): the teacher never rewards the student's stop, "
               "responses grow and repeat (ms-swift#9526)",
               f"give the student the teacher's stop: add id {teacher_stop[1]} to eos_token_id in the student's "
               "generation_config.json and train with the teacher's chat format, or pick a teacher whose turns end "
               "with the student's eos", student_stop=list(s.eos_ids), teacher_stop=list(teacher_stop))]


def rendering_findings(s: ModelFacts, t: ModelFacts, plan: Plan, same_map: bool = True) -> list[Finding]:
    """The probe's prompt under the student's template beside the teacher's own (what the templates render for
    these messages, not their source: templates that differ only in branches these messages do not take render
    alike). A difference is a warning: the teacher is scored under a rendering it was not trained with
    (tinker-cookbook#796 measured +0.287 nats/token of bias); compare --template student,teacher measures it."""
    if not plan.chat_template:
        return [_f("ok", "rendering", "plain-text prompts (--no-chat-template): both models read the same text")]
    if not t.has_chat_template or t.example_text is None or s.example_text is None:
        return []
    what = "the probe's prompts" if plan.prompts_given else "an example prompt"
    n_diff = sum(a != b for a, b in zip(s.rendered, t.rendered)) if same_map else 0
    if s.example_text == t.example_text and not n_diff:
        return [_f("ok", "rendering", f"the teacher's own template renders {what} exactly as the student's")]
    fix = ("the teacher is scored under the student's rendering (as OPD trainers do); measure the bias with "
           "compare --template student,teacher, or align the templates")
    count = f"{n_diff} of {len(s.rendered)} prompts render to other token ids" if same_map else "example prompt"
    if s.example_text == t.example_text:  # the same text, split into other tokens
        return [_f("warn", "rendering", f"the same rendered text tokenizes differently ({count}): the teacher's "
                   f"tokenizer splits text unlike the student's ({t.tokenizer_class} vs {s.tokenizer_class})",
                   "harmless when the teacher scores the student's ids (--template student, the default); "
                   "--template teacher would feed it its own split", student_tokens=len(s.rendered[0]),
                   teacher_tokens=len(t.rendered[0]))]
    diffs = templates.describe_differences(s.example_text, t.example_text, user_text=plan.example_user_text)
    return [_f("warn", "rendering", f"the teacher's own template renders the prompt differently from the "
               f"student's ({count}): {'; '.join(diffs)}", fix,
               student=s.example_text, teacher=t.example_text,
               diff=templates.line_diff(s.example_text, t.example_text))]


def teacher_context_findings(s: ModelFacts, t: ModelFacts, plan: Plan) -> list[Finding]:
    ctx = t.context_length
    lengths = list(s.rendered_lengths) + (list(t.rendered_lengths) if "teacher" in plan.template else [])
    if ctx is None or not plan.prompts_given or not lengths:
        return []
    longest = max(lengths)
    if longest >= ctx:
        return [_f("error", "context", f"teacher {t.name} has a context of {ctx} tokens, but the longest prompt "
                   f"alone is {longest} tokens", "drop the long prompts, or pick a teacher with a longer context")]
    if longest + plan.max_new_tokens > ctx:
        return [_f("warn", "context", f"teacher {t.name} has a context of {ctx} tokens: the longest prompt "
                   f"({longest}) + --max-new-tokens {plan.max_new_tokens} = {longest + plan.max_new_tokens} does "
                   "not fit, so a long response stops the run when the teacher scores it",
                   f"lower --max-new-tokens to {ctx - longest} or less, or drop the long prompts")]
    return [_f("ok", "context", f"longest prompt {longest} + --max-new-tokens {plan.max_new_tokens} fits the "
               f"teacher's context of {ctx}")]


# ------------------------------------------------------------------------------------------------ summary
def worst(findings: Sequence[Finding]) -> str:
    """The most severe level among the findings ("ok" when none)."""
    rank = {lv: i for i, lv in enumerate(LEVELS)}
    return max((f.level for f in findings), key=lambda lv: rank[lv], default="ok")


def exit_code(findings: Sequence[Finding]) -> int:
    """0: no warning and no error; 1: warnings; 2: an error (docs/check.md)."""
    return {"error": 2, "warn": 1}.get(worst(findings), 0)
