"""compare and verify with a teacher that has another tokenizer (docs/cross-tokenizer.md): the student's response
*text*, tokenized by the teacher after the teacher's own rendering of the prompt, scored by the teacher, and aligned
with the student's tokens at their common boundaries (align.py); metrics in crossmetrics.py, verdict in
crossverdict.py.

Token starts come from decoding token prefixes with each model's own tokenizer (not from the tokenizers' offset
mappings: byte-level BPE offsets trim a token's leading space, which would put the two sides' boundaries at
different characters). A teacher tokenizer that cannot reproduce the student's text (a normalizer, unknown tokens)
is refused before its weights load.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from ..align import align, length_summary, token_starts
from ..backends.base import ModelSpec
from ..backends.loading import eos_ids_of, load_tokenizer, resolve_model_path, turn_end_of
from ..errors import InputError
from ..prompts import render_prompt_ids
from ..types import ProbePrompt, Rollout
from ..vocab import CROSS_FIX


# ------------------------------------------------------------------------------------------------ token texts
def _decoder(tok):
    """A batch decoder that keeps special tokens and spaces as they are (the Rust tokenizer when there is one)."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        return lambda seqs: backend.decode_batch([list(s) for s in seqs], skip_special_tokens=False)
    return lambda seqs: tok.batch_decode([list(map(int, s)) for s in seqs], skip_special_tokens=False,
                                         clean_up_tokenization_spaces=False)


def starts_and_text(tok, ids: Sequence[int], decode=None) -> tuple[np.ndarray, str]:
    """(where each token starts in the decoded text, the text). Linear when the tokens decode one by one to the
    whole text (byte-level BPE without split characters, word-level); otherwise from a decode of every prefix."""
    decode = decode or _decoder(tok)
    ids = list(ids)
    text = decode([ids])[0]
    if not ids:
        return np.zeros(0, dtype=np.int64), text
    pieces = decode([[i] for i in ids])
    if "".join(pieces) == text:
        lengths = np.cumsum([0] + [len(p) for p in pieces[:-1]])
        return lengths.astype(np.int64), text
    prefixes = decode([ids[:i] for i in range(len(ids))])
    return token_starts([len(p) for p in prefixes], [text.startswith(p) for p in prefixes]), text


def reproduces(tok, text: str) -> bool:
    """Whether ``tok`` gives ``text`` back when it encodes and decodes it (what text alignment needs)."""
    return _decoder(tok)([tok.encode(text, add_special_tokens=False)])[0] == text


def token_strings(tok, size: int) -> list[str | None]:
    """The text each id adds in the middle of a text (decoded after a one-character anchor token, so decoders that
    strip a leading space do not hide it); None for an id whose text is not whole (a piece of a UTF-8 character)."""
    decode = _decoder(tok)
    anchor = next((ids[0] for c in "a0xA" if len(ids := tok.encode(c, add_special_tokens=False)) == 1), None)
    if anchor is None:
        texts = decode([[i] for i in range(size)])
        return [None if "\ufffd" in t else t for t in texts]
    head = decode([[anchor]])[0]
    texts = decode([[anchor, i] for i in range(size)])
    return [t[len(head):] if t.startswith(head) and "\ufffd" not in t else None for t in texts]


# ------------------------------------------------------------------------------------------------ the text views
@dataclass(frozen=True)
class TextView:
    """Responses of the student as one teacher with another tokenizer sees them, and the alignment of both.

    Global indices over all responses: N student states, M teacher positions, C chunks. ``depth_map``: per
    response, the teacher position where the student's prefix of each length d (0..S) is cut at its last common
    boundary.
    """

    teacher_responses: list[tuple[int, ...]]
    texts: list[str]
    teacher_at_N: np.ndarray
    student_chunk_N: np.ndarray
    teacher_chunk_M: np.ndarray
    n_chunks: int
    depth_map: list[np.ndarray]
    student_end_id: int | None  # the stop token the stopped responses ended with
    record: dict  # results.json pairs[].alignment, without the metric table


def teacher_end_token(tok, chat_template: bool) -> int | None:
    """The token the teacher ends a reply with: its template's end of turn (its eos without a template)."""
    turn = turn_end_of(tok) if chat_template else None
    if turn is not None:
        return int(turn[1])
    eos = eos_ids_of(tok, None)
    return int(eos[0]) if eos else None


class TextPair:
    """A student tokenizer and a teacher tokenizer over the same texts: the teacher's rendering of a prompt, its
    tokenization of the student's responses aligned with the student's tokens, the shared-string maps."""

    def __init__(self, student_tok, teacher_tok, chat_template: bool, name: str):
        self.student_tok, self.teacher_tok, self.name = student_tok, teacher_tok, name
        self.s_dec, self.t_dec = _decoder(student_tok), _decoder(teacher_tok)
        # a teacher without a chat template (a base model) reads the plain prompt text
        self.own_template = chat_template and bool(getattr(teacher_tok, "chat_template", None))
        self.rendering = ("its own chat template" if self.own_template else
                          "plain prompt text (it has no chat template)" if chat_template else
                          "plain prompt text (--no-chat-template)")
        self.t_end = teacher_end_token(teacher_tok, self.own_template)
        if self.t_end is None:
            raise InputError(f"teacher {name} has neither an end-of-turn token nor an eos token, so the student's "
                             "stop cannot be scored", fix="set eos_token in the teacher's tokenizer_config.json")
        self._maps = None

    def render(self, prompt: ProbePrompt) -> tuple[int, ...]:
        return tuple(render_prompt_ids(self.teacher_tok, prompt, use_chat_template=self.own_template))

    def string_maps(self, student_size: int, teacher_size: int, student_end_id: int | None):
        """(teacher id -> student id, student id shared?) by string, over the models' vocabularies; the teacher's
        end token maps to the student's stop token (they end the same reply). Read once per pair."""
        from ..crossmetrics import string_maps

        if self._maps is None:
            self._maps = string_maps(token_strings(self.student_tok, student_size),
                                     token_strings(self.teacher_tok, teacher_size))
        t2s, shared = self._maps[0].copy(), self._maps[1].copy()
        if student_end_id is not None and self.t_end < t2s.size and student_end_id < shared.size:
            t2s[self.t_end] = student_end_id
            shared[student_end_id] = True
        return t2s, shared

    def view(self, responses: list, stopped: list[bool], labels: list | None = None) -> TextView:
        """Tokenize each response's text with the teacher's tokenizer and align. ``stopped``: the response ends with
        the student's stop token (it then maps to the teacher's end token). Raises InputError when the teacher's
        tokenizer does not reproduce a text."""
        t_responses, texts, at, s_chunk, t_chunk, depth_map = [], [], [], [], [], []
        n_chunks, m_offset, s_end = 0, 0, None
        s_counts, t_counts, chars = [], [], []
        for j, (resp, stop) in enumerate(zip(responses, stopped)):
            ids = list(resp)
            stop = stop and bool(ids)
            body = ids[:-1] if stop else ids
            if stop:
                s_end = ids[-1]
            s_starts, text = starts_and_text(self.student_tok, body, self.s_dec)
            t_ids = self.teacher_tok.encode(text, add_special_tokens=False)
            t_starts, t_text = starts_and_text(self.teacher_tok, t_ids, self.t_dec)
            if t_text != text:
                label = labels[j] if labels is not None else j
                raise InputError(
                    f"teacher {self.name}'s tokenizer does not reproduce the student's response text (rollout "
                    f"{label}: {text[:60]!r} comes back as {t_text[:60]!r}): its normalizer or unknown tokens "
                    "change the text, so the two tokenizations cannot be aligned", fix=CROSS_FIX)
            if stop:
                s_starts = np.append(s_starts, len(text))
                t_starts = np.append(t_starts, len(text))
                t_ids = list(t_ids) + [self.t_end]
            t_responses.append(tuple(t_ids))
            texts.append(text)
            if not len(s_starts) or not len(t_starts):
                # one side has no token (a response of text-less tokens): one chunk that only that side has, whose
                # chunk metrics are undefined (crossmetrics: NaN), no aligned position
                at.append(np.full(len(s_starts), -1, dtype=np.int64))
                s_chunk.append(np.full(len(s_starts), n_chunks, dtype=np.int64))
                t_chunk.append(np.full(len(t_starts), n_chunks, dtype=np.int64))
                depth_map.append(np.zeros(len(s_starts) + 1, dtype=np.int64))
                n_chunks += 1
                m_offset += len(t_ids)
                continue
            a = align(s_starts, t_starts)
            at.append(np.where(a.aligned_S, a.teacher_at_S + m_offset, -1))
            s_chunk.append(a.student_chunk_S + n_chunks)
            t_chunk.append(a.teacher_chunk_T + n_chunks)
            first_t = np.searchsorted(a.teacher_chunk_T, np.arange(a.n_chunks))  # first teacher token of each chunk
            depth_map.append(np.append(first_t[a.student_chunk_S], len(t_ids)))
            sc, tc = a.tokens_per_chunk()
            s_counts.append(sc)
            t_counts.append(tc)
            chars.append(np.maximum(np.append(a.common_C[1:], len(text)) - a.common_C, 0))
            n_chunks += a.n_chunks
            m_offset += len(t_ids)
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, dtype=np.int64)  # noqa: E731
        at_N = cat(at)
        sc_all, tc_all = cat(s_counts), cat(t_counts)
        record = {
            "mode": "text",
            "aligned_share": float((at_N >= 0).mean()) if at_N.size else None,
            "chunks": int(n_chunks),
            "student_tokens": int(at_N.size), "teacher_tokens": int(m_offset),
            "student_tokens_per_chunk": length_summary(sc_all),
            "teacher_tokens_per_chunk": length_summary(tc_all),
            "chunk_chars": length_summary(cat(chars)),
            "multi_token_chunks": float(((sc_all > 1) | (tc_all > 1)).mean()) if sc_all.size else None,
            "teacher_end_token": self.t_end,
            "teacher_rendering": self.rendering,
        }
        return TextView(teacher_responses=t_responses, texts=texts, teacher_at_N=at_N, student_chunk_N=cat(s_chunk),
                        teacher_chunk_M=cat(t_chunk), n_chunks=n_chunks, depth_map=depth_map, student_end_id=s_end,
                        record=record)


def text_views(pair: TextPair, rollouts: list[Rollout], prompts: dict[int, ProbePrompt]):
    """compare's view: (the rollouts in the teacher's tokens, under its rendering of their prompts; the TextView)."""
    view = pair.view([r.response_token_ids for r in rollouts], [r.finish_reason == "stop" for r in rollouts],
                     [r.rollout_id for r in rollouts])
    t_prompts = {i: pair.render(p) for i, p in prompts.items()}
    t_rollouts = [replace(r, prompt_token_ids=t_prompts[r.prompt_index], response_token_ids=ids, response_text=text)
                  for r, ids, text in zip(rollouts, view.teacher_responses, view.texts)]
    return t_rollouts, view


@functools.lru_cache(maxsize=8)
def teacher_tokenizer(spec: ModelSpec):
    """The teacher's tokenizer, read once per run (a 262k-token tokenizer takes seconds to load); a served
    teacher's local copy (backends/served.py)."""
    if spec.served_tokenizer:
        spec = ModelSpec(path=spec.served_tokenizer, trust_remote_code=spec.trust_remote_code)
    return load_tokenizer(resolve_model_path(spec, "teacher"), spec, "teacher")


# ------------------------------------------------------------------------------------------------ a teacher
def score_cross_teacher(cfg, name: str, slug: str, student, states, out, progress):
    """Score one teacher through text alignment: (the PairResult without a verdict, per-state metrics, exact-masks),
    as probe._pair_result returns them for a same-tokenizer teacher. ``student``: inputs.StudentSide; ``states``:
    probe._States."""
    import time

    from .. import metrics
    from ..backends import load_backend_model
    from ..crossmetrics import APPROXIMATE, HOW, cross_state_metrics
    from ..types import Novelty, PairResult
    from . import evidence
    from .stages import check_teacher_context, check_top_k, free_model, model_spec, score_rollouts

    spec = model_spec(name, cfg)
    t0 = time.perf_counter()
    tok = teacher_tokenizer(spec)
    if not student.prompts:
        raise InputError("a teacher with another tokenizer renders the prompts itself, and the reused run has no "
                         "prompts.jsonl", fix="reuse a run made by this opd-probe version, or re-run the probe")
    pair_text = TextPair(student.tokenizer, tok, cfg.chat_template, name)
    t_rollouts, view = text_views(pair_text, student.rollouts, {p.index: p for p in student.prompts})
    align_s = time.perf_counter() - t0
    progress.log(f"loading teacher {name} (another tokenizer: scored on its own tokenization of the student's text)")
    t0 = time.perf_counter()
    teacher = load_backend_model(cfg.score_backend_used, spec, role="teacher")
    check_top_k(teacher, cfg.top_k, "teacher")
    load_s = time.perf_counter() - t0
    check_teacher_context(teacher, t_rollouts, name)
    t_scores, timing = score_rollouts(teacher, t_rollouts, cfg.top_k, cfg.score_batch_tokens, slug, out, progress)
    pair_novelty = Novelty()
    if cfg.continuation_depths:
        progress.log(f"continuation gain of {name} at depths {list(cfg.continuation_depths)}")
        t1 = time.perf_counter()
        pair_novelty = Novelty(continuation=tuple(evidence.continuation_gain(
            teacher, t_rollouts, states.correct, student.answers, cfg.continuation_depths,
            cfg.max_new_tokens, seed=cfg.seed, depth_map=view.depth_map)))
        timing["continuation_seconds"] = time.perf_counter() - t1
    info, t_size = teacher.info, teacher.vocab_size
    free_model(teacher)
    t0 = time.perf_counter()
    s = student.scores
    s_size = max(len(student.tokenizer), int(s.topk_ids_LK.max()) + 1)
    t2s, shared = pair_text.string_maps(s_size, max(len(tok), t_size), view.student_end_id)
    per_state = cross_state_metrics(
        s.topk_ids_LK, s.topk_logprobs_LK, s.entropy_L, s.sampled_logprob_L,
        t_scores.topk_ids_LK, t_scores.topk_logprobs_LK, t_scores.entropy_L, t_scores.sampled_logprob_L,
        teacher_to_student_V=t2s, student_shared_V=shared, teacher_at_N=view.teacher_at_N,
        student_chunk_N=view.student_chunk_N, teacher_chunk_M=view.teacher_chunk_M, n_chunks=view.n_chunks)
    timing["alignment_seconds"] = align_s + time.perf_counter() - t0
    agg = metrics.aggregate(per_state, states.prompt_N, states.depth_N, states.n_prompts, states.edges,
                            n_boot=cfg.n_boot, seed=cfg.seed, level=cfg.ci_level)
    n = len(states.depth_N)
    exact = {m: np.zeros(n, dtype=bool) for m in APPROXIMATE}
    approx = {m: {"exact_fraction": None, "how": HOW[m]} for m in APPROXIMATE}  # approximate by construction
    for side, scores in (("student", s), ("teacher", t_scores)):  # vLLM scoring: entropies from top-K' (docs/vllm.md)
        if scores.entropy_exact_L is not None and not scores.entropy_exact_L.all():
            approx[f"{side}_entropy"] = {"exact_fraction": float(scores.entropy_exact_L.mean()),
                                         "how": "estimated from top-K' log-probs (docs/vllm.md)"}
    why = "--alignment text" if cfg.alignment == "text" else "another tokenizer"
    warnings = [f"teacher {name} scored on its own tokenization of the student's text ({why}; "
                f"{view.record['aligned_share']:.0%} of the student's positions aligned, {view.record['chunks']} "
                "chunks): chunk-level metrics are exact, position-level ones approximate (pairs[].alignment)"]
    if "student" in cfg.template and cfg.chat_template:
        warnings[0] += f"; its prompts: {view.record['teacher_rendering']}, not the student's rendering"
    pair = PairResult(
        teacher=name, slug=slug, model=info, pooled=agg["pooled"], depth=tuple(agg["depth"]),
        per_prompt=metrics.per_prompt_table(agg, states.prompt_ids),
        timings={"load_seconds": load_s, **timing}, warnings=tuple(warnings), novelty=pair_novelty,
        approximate=approx,
        alignment={**view.record, "metrics": {m: HOW[m] for m in per_state}},
    )
    return pair, per_state, exact


def needs_text_alignment(student_vocab: dict[str, int], spec: ModelSpec, alignment: str) -> bool:
    """Whether a teacher is scored through text alignment: always with --alignment text; with auto, when its
    token -> id map differs from the student's at any student id (vocab.py's rule for scoring on ids)."""
    if alignment == "text":
        return True
    from ..vocab import vocab_diff

    differ, _ = vocab_diff(student_vocab, teacher_tokenizer(spec).get_vocab())
    if differ and spec.served_tokenizer:
        raise InputError(f"served teacher {spec.path}: its tokenizer ({spec.served_tokenizer}) has another token -> "
                         "id map than the student's; a served teacher is scored on the student's ids",
                         fix="serve a teacher that shares the student's tokenizer, or load this one locally "
                             "(its folder as the teacher) to score it through text alignment")
    return bool(differ)


def other_tokenizer(cfg) -> bool:
    """Whether a verify config's teacher is read through text (another token -> id map than its student's, or
    --alignment text; tokenizers only; False when either cannot be read: --print-recipe then prints the
    same-tokenizer recipe)."""
    from ..errors import ProbeError
    from .stages import model_spec

    try:
        spec = model_spec(cfg.student, cfg)
        vocab = load_tokenizer(resolve_model_path(spec, "student"), spec, "student").get_vocab()
        return needs_text_alignment(vocab, model_spec(cfg.teacher, cfg), cfg.alignment)
    except (ProbeError, OSError, ValueError):
        return False


# ------------------------------------------------------------------------------------------------ verify
class CrossTeacher:
    """verify's teacher with another tokenizer (``--loss sampled``): the loaded teacher behind the student's prompt
    ids. It generates and decodes from the student's rendered prompts (its own rendering of the same prompt), and
    scores the student's responses through text alignment (``states``), so arms.py uses it like any teacher."""

    cross = True

    def __init__(self, teacher, pair: TextPair, prompt_map: dict[tuple, tuple]):
        self.teacher, self.pair, self.prompt_map = teacher, pair, prompt_map
        self.model, self.info, self.vocab_size = teacher.model, teacher.info, teacher.vocab_size

    def _own(self, prompt_ids) -> list[int]:
        return list(self.prompt_map[tuple(prompt_ids)])

    def vocab(self) -> dict[str, int]:
        return self.teacher.vocab()

    def decode(self, ids) -> str:
        return self.teacher.decode(ids)

    def generate(self, prompt_ids, settings, seed: int):
        return self.teacher.generate([self._own(p) for p in prompt_ids], settings, seed=seed)

    def states(self, prompts, responses, student_eos: set[int], s_ids_NK, s_lp_NK, s_entropy_N, s_sampled_N, k: int):
        """crossmetrics.cross_state_metrics of the student's responses (its top-k and sampled log-probs given) and
        this teacher's scores of its own tokenization of them."""
        from ..backends.base import ScoreArrays
        from ..crossmetrics import cross_state_metrics

        view = self.pair.view(responses, [bool(r) and r[-1] in student_eos for r in responses])
        t = ScoreArrays.concat(self.teacher.score([self._own(p) for p in prompts], view.teacher_responses, k=k))
        s_size = max(len(self.pair.student_tok), int(np.max(s_ids_NK)) + 1)
        t2s, shared = self.pair.string_maps(s_size, max(len(self.pair.teacher_tok), self.vocab_size),
                                            view.student_end_id)
        return cross_state_metrics(s_ids_NK, s_lp_NK, s_entropy_N, s_sampled_N, t.topk_ids_LK, t.topk_logprobs_LK,
                                   t.entropy_L, t.sampled_logprob_L, teacher_to_student_V=t2s,
                                   student_shared_V=shared, teacher_at_N=view.teacher_at_N,
                                   student_chunk_N=view.student_chunk_N, teacher_chunk_M=view.teacher_chunk_M,
                                   n_chunks=view.n_chunks)


def verify_setup(cfg, inputs, data, spec_s, spec_t):
    """(TextPair, student prompt ids -> the teacher's rendering) when verify's teacher has another tokenizer, else
    None. Such a pair trains at chunk level (--loss sampled); a cold start (teacher rollouts in the student's
    tokens) is not built for it."""
    student_tok = load_tokenizer(resolve_model_path(spec_s, "student"), spec_s, "student")
    if not needs_text_alignment(student_tok.get_vocab(), spec_t, cfg.alignment):
        return None
    if cfg.loss != "sampled":  # the preflight refuses it first; kept for library callers
        raise InputError(f"teacher {cfg.teacher} has another tokenizer: the top-k loss needs its log-probs of the "
                         "student's ids", fix="use --loss sampled (chunk-level OPD on its own tokenization)")
    if cfg.cold_start:
        raise InputError(f"--cold-start with teacher {cfg.teacher}, which has another tokenizer, is not supported "
                         "yet (its rollouts would have to be re-tokenized for the student)",
                         fix="drop --cold-start, or pick a teacher from the student's model family")
    pair = TextPair(student_tok, teacher_tokenizer(spec_t), cfg.chat_template, cfg.teacher)
    # data holds the same prompts rendered by the student (verify.render_data), in the same order
    rendered = list(data.train) + (data.target.rendered if data.target else []) + (
        data.retain.rendered if data.retain else [])
    rows = list(inputs.train) + list(inputs.target or ()) + list(inputs.retain or ())
    return pair, {tuple(ids): pair.render(p) for ids, p in zip(rendered, rows, strict=True)}


def split_warning(student_tok, teacher_tok, rollouts: list[Rollout], name: str) -> str | None:
    """For a teacher with the student's token -> id map plus tokens of its own: a warning when its tokenizer splits
    the student's response texts otherwise than the student's does (it has merges the student lacks), so scoring the
    student's ids feeds it splits it never produces. None when every text splits alike."""
    texts = [r.response_text for r in rollouts if r.response_text]
    if not texts:
        return None
    differ = sum(student_tok.encode(t, add_special_tokens=False) != teacher_tok.encode(t, add_special_tokens=False)
                 for t in texts)
    if not differ:
        return None
    return (f"teacher {name} splits {differ} of {len(texts)} response texts into other tokens than the student's "
            "tokenizer does (its extra tokens are merges): scored on the student's ids, as id-based trainers feed "
            "it, it reads splits it never produces; --alignment text scores its own split, as trainers that align "
            "tokenizations do (docs/cross-tokenizer.md)")
