"""`opd-probe select-prompts`: score a candidate training pool per prompt, keep the most teacher-aligned prompts
and mix in out-of-distribution ones (paper §5.2; docs/recipe.md). Orchestration only: never prints.

pool (JSONL, streamed) -> validate all of it (no model yet) -> per chunk of prompts: render with the student's
template, sample --probe-samples rollouts each, the student and the teacher score the same token ids, per-prompt
means of the per-state metrics -> append to <work>/scores.jsonl (the resume point) -> rank, keep, mix
(selection.py, pure) -> stream the pool again and write the kept records, with their scores added, to --out.

Both models stay loaded for the whole pass (a chunk is scored by the teacher right after the student samples it),
so the pool is read once and nothing per state is kept on disk: memory holds both models and one chunk.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import __version__, selection
from ..backends.base import ScoreArrays
from ..config import DEFAULT_TEMPERATURE, DEFAULT_TOP_K, from_known_keys
from ..errors import InputError, OutputError, ProbeError
from ..prompts import PoolRecord, iter_pool, scan_pool
from ..rundir import OutDir, atomic_write_text, dumps, read_pool_scores
from ..served import is_served
from .stages import (NullProgress, Progress, environment, load_pair, model_spec, prompts_per_call, sampling_seed,
                     sampling_settings, score_batched, state_metrics)

SCORE_FIELD = "opd_probe"  # the field each kept record gains (the user's own fields are kept as they are)
DEFAULT_PROBE_SAMPLES = 2
DEFAULT_CHUNK = 64


@dataclass(frozen=True)
class SelectConfig:
    student: str
    teacher: str
    pool: str
    out: str
    keep: int
    work: str = ""  # "" = next to --out: train.jsonl -> train.select/
    ood_fraction: float = selection.DEFAULT_OOD_FRACTION
    rank_by: str = selection.DEFAULT_RANK_BY
    probe_samples: int = DEFAULT_PROBE_SAMPLES
    max_new_tokens: int = 256
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = 1.0
    top_k: int = DEFAULT_TOP_K
    seed: int = 0
    chunk_prompts: int = DEFAULT_CHUNK
    batch_size: int = 16
    score_batch_tokens: int = 8192
    chat_template: bool = True
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    backend: str = "hf"
    resume: bool = False
    overwrite: bool = False

    # Settings that choose from the scores without changing them: a --resume may change them, so a finished
    # pool can be re-selected (another --keep, --ood-fraction, --rank-by, --seed of the draw is not one: it also
    # seeds sampling) without scoring anything again.
    SELECTION_ONLY = ("keep", "ood_fraction", "rank_by", "out", "work", "resume", "overwrite", "device",
                      "score_batch_tokens")

    def __post_init__(self):
        if not self.work:
            out = Path(self.out)
            object.__setattr__(self, "work", str(out.with_name(out.stem + ".select")))
        if is_served(self.teacher) and self.rank_by == "kl":
            raise InputError("--rank-by kl with a served teacher: its top-k reverse KL is a lower bound wherever a "
                             "student id falls outside the top-K' the server returns (docs/endpoint.md)",
                             fix="--rank-by mass or --rank-by overlap (exact from a served teacher)")
        fix = "correct the flag and run again (see opd-probe select-prompts --help)"
        checks = [
            (self.keep >= 1, f"--keep must be at least 1, got {self.keep}"),
            (0.0 <= self.ood_fraction <= 1.0, f"--ood-fraction must be in [0, 1], got {self.ood_fraction:g}"),
            (self.rank_by in selection.RANK_BY, f"--rank-by must be one of {', '.join(selection.RANK_BY)}, "
                                                f"got {self.rank_by!r}"),
            (self.probe_samples >= 1, "--probe-samples must be at least 1"),
            (self.max_new_tokens >= 1, "--max-new-tokens must be at least 1"),
            (self.temperature >= 0, "--temperature must be >= 0"),
            (0 < self.top_p <= 1, "--top-p must be in (0, 1]"),
            (self.top_k >= 1, "--top-k must be at least 1"),
            (self.chunk_prompts >= 1, "--chunk-prompts must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (self.score_batch_tokens >= 1, "--score-batch-tokens must be at least 1"),
            (not (self.resume and self.overwrite), "--resume and --overwrite exclude each other"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(msg, fix=fix)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SelectConfig":
        return from_known_keys(cls, d, "select config")

    def numbers_key(self) -> dict:
        """The settings that determine the per-prompt scores; a resumed selection must match them."""
        d = self.to_dict()
        for name in self.SELECTION_ONLY:
            d.pop(name, None)
        return d


def _append_lines(path: Path, rows: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def _chunks(records: Iterator[PoolRecord], size: int) -> Iterator[list[PoolRecord]]:
    chunk: list[PoolRecord] = []
    for rec in records:
        chunk.append(rec)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


# ------------------------------------------------------------------------------------------------ scoring
class _Clock:
    def __init__(self):
        self.t = {"sampling_seconds": 0.0, "sampled_tokens": 0, "student_scoring_seconds": 0.0,
                  "student_scored_tokens": 0, "teacher_scoring_seconds": 0.0, "teacher_scored_tokens": 0}

    def rates(self) -> dict:
        def rate(tok, sec):
            return self.t[tok] / self.t[sec] if self.t[sec] > 0 and self.t[tok] else None

        return {**self.t,
                "sampling_tokens_per_second": rate("sampled_tokens", "sampling_seconds"),
                "student_scoring_tokens_per_second": rate("student_scored_tokens", "student_scoring_seconds"),
                "teacher_scoring_tokens_per_second": rate("teacher_scored_tokens", "teacher_scoring_seconds")}


def _score(model, prompts: list[tuple[int, ...]], responses: list[tuple[int, ...]], k: int, budget: int,
           query: list[np.ndarray] | None = None) -> tuple[ScoreArrays, int]:
    """All pairs' scores joined, and the tokens scored."""
    scored = score_batched(model, prompts, responses, k, budget, query=query)
    return ScoreArrays.concat(scored), sum(len(p) + len(r) for p, r in zip(prompts, responses))


def score_chunk(student, teacher, chunk: list[PoolRecord], cfg: SelectConfig, context: int | None,
                clock: _Clock) -> list[dict]:
    """Score line per record of ``chunk``: sample, score with both models, per-prompt means."""
    rows: dict[int, dict] = {}
    todo: list[tuple[PoolRecord, list[int]]] = []
    for rec in chunk:
        base = {"index": rec.index, "line": rec.line, "id": rec.prompt.id, "digest": rec.digest}
        try:
            ids = student.render(rec.prompt, cfg.chat_template)
        except ProbeError as e:
            raise InputError(f"{cfg.pool}: line {rec.line}: {e.message}", fix=e.fix) from e
        if context is not None and len(ids) + cfg.max_new_tokens > context:
            rows[rec.index] = {**base, "skipped": f"prompt ({len(ids)} tokens) + --max-new-tokens "
                                                   f"{cfg.max_new_tokens} exceed the models' context of {context}"}
        else:
            todo.append((rec, ids))
    if todo:
        settings = sampling_settings(cfg, cfg.probe_samples)
        per_call = prompts_per_call(settings)
        prompts, responses, owner = [], [], []
        t0 = time.perf_counter()
        for start in range(0, len(todo), per_call):
            part = todo[start:start + per_call]
            # seeded by the first record's pool index: a resumed chunk samples exactly what it would have
            gens = student.generate([ids for _, ids in part], settings, seed=sampling_seed(cfg.seed, part[0][0].index))
            for j, ((rec, ids), g_list) in enumerate(zip(part, gens)):
                for g in g_list:
                    prompts.append(tuple(ids))
                    responses.append(g.response_ids)
                    owner.append(start + j)
        clock.t["sampling_seconds"] += time.perf_counter() - t0
        clock.t["sampled_tokens"] += sum(len(r) for r in responses)

        t0 = time.perf_counter()
        s, n_tok = _score(student, prompts, responses, cfg.top_k, cfg.score_batch_tokens)
        clock.t["student_scoring_seconds"] += time.perf_counter() - t0
        clock.t["student_scored_tokens"] += n_tok
        lengths = np.array([len(r) for r in responses])
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        query = [s.topk_ids_LK[offsets[i]:offsets[i + 1]] for i in range(len(responses))]
        t0 = time.perf_counter()
        t, n_tok = _score(teacher, prompts, responses, cfg.top_k, cfg.score_batch_tokens, query=query)
        clock.t["teacher_scoring_seconds"] += time.perf_counter() - t0
        clock.t["teacher_scored_tokens"] += n_tok

        states = state_metrics(s, t)
        means = selection.prompt_means(states, np.repeat(owner, lengths), len(todo))
        resp_len = np.bincount(owner, weights=lengths, minlength=len(todo)) / cfg.probe_samples
        for j, (rec, ids) in enumerate(todo):
            rows[rec.index] = {
                "index": rec.index, "line": rec.line, "id": rec.prompt.id, "digest": rec.digest,
                "n_states": int(means["n_states"][j]), "prompt_tokens": len(ids),
                "response_length_mean": float(resp_len[j]),
                **{m: _finite(means[m][j]) for m in selection.SCORE_METRICS},
            }
    return [rows[rec.index] for rec in chunk]


# ------------------------------------------------------------------------------------------------ the run
def _check_out(cfg: SelectConfig) -> None:
    out, pool = Path(cfg.out).expanduser(), Path(cfg.pool).expanduser()
    if out.exists() and pool.exists() and out.resolve() == pool.resolve():
        raise InputError(f"--out {out} is the pool file itself", fix="write the selection to another file")
    if out.is_dir():
        raise OutputError(f"--out {out} is a directory", fix="pass a file path, e.g. --out train.jsonl")
    if out.exists() and not (cfg.resume or cfg.overwrite):
        raise OutputError(f"--out {out} already exists; refusing to overwrite it",
                          fix="pass another --out, --overwrite to replace it, or --resume to continue the "
                              "selection that wrote it")
    if Path(cfg.work).expanduser().resolve() == out.resolve():
        raise InputError("--work and --out are the same path", fix="give the work directory its own path")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write --out {out}: {parent} is not writable", fix="pass a writable path for --out")


def run_select(cfg: SelectConfig, progress: Progress | None = None) -> dict:
    """Score the pool (resuming from <work>/scores.jsonl), select, write --out and <work>/selection.json.
    Returns the selection document (the CLI renders it, and writes <work>/summary.md). Raises ProbeError
    subclasses on bad input (nothing finished is lost)."""
    from .preflight import fail_fast

    progress = progress or NullProgress()
    started = time.perf_counter()
    created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    _check_out(cfg)
    progress.log(f"checking the pool {cfg.pool}")
    scan = scan_pool(cfg.pool)  # every line validated before any model loads
    if cfg.keep > scan.count:
        raise InputError(f"--keep {cfg.keep} is larger than the pool ({scan.count} prompts in {cfg.pool})",
                         fix=f"lower --keep to at most {scan.count}, or add prompts to the pool")
    pre_warnings = fail_fast(cfg, cfg.student, [cfg.teacher])  # before any weight loads (docs/check.md)
    work = OutDir(cfg.work)
    work.prepare(cfg.to_dict(), resume=cfg.resume, overwrite=cfg.overwrite,
                 numbers_key=lambda d: SelectConfig.from_dict(d).numbers_key(), flag="--work")
    scores_path = work.path / "scores.jsonl"
    done = {i: d for i, d in read_pool_scores(scores_path).items()
            if i < scan.count and d.get("digest") == scan.digests[i] and d.get("line") == scan.lines[i]}
    atomic_write_text(scores_path, "".join(json.dumps(done[i], ensure_ascii=False) + "\n" for i in sorted(done)))
    reused = len(done)

    clock = _Clock()
    models: dict = {}
    progress.stage("scoring the pool", scan.count)
    progress.advance(reused)
    if reused < scan.count:
        student, teacher, warnings = load_pair(cfg.backend, model_spec(cfg.student, cfg), model_spec(cfg.teacher, cfg),
                                               cfg.top_k, progress)
        models = {"student": student.info, "teacher": teacher.info, "vocab_warnings": warnings,
                  "preflight_warnings": pre_warnings}
        contexts = [c for c in (student.context_length(), teacher.context_length()) if c]
        context = min(contexts) if contexts else None
        for chunk in _chunks(iter_pool(cfg.pool), cfg.chunk_prompts):
            if all(r.index in done for r in chunk):
                continue
            rows = score_chunk(student, teacher, chunk, cfg, context, clock)
            # a torn write may have left part of this chunk on disk: it was sampled again whole (same seeds,
            # same draws); append only what is missing
            fresh = [r for r in rows if r["index"] not in done]
            _append_lines(scores_path, fresh)
            done.update((r["index"], r) for r in fresh)
            progress.advance(len(fresh))
        del student, teacher
    return finish_selection(cfg, scan, done, work, clock, models, reused, created_at, started, environment())


def finish_selection(cfg: SelectConfig, scan, done: dict[int, dict], work: OutDir, clock: _Clock, models: dict,
                     reused: int, created_at: str, started: float, env: dict) -> dict:
    """Select from the per-prompt scores, write --out (the kept records with their scores) and selection.json."""
    n = scan.count
    scores = {m: np.array([np.nan if done[i].get(m) is None else done[i][m] for i in range(n)], dtype=np.float64)
              for m in selection.SCORE_METRICS}
    skipped = {i: done[i]["skipped"] for i in range(n) if "skipped" in done[i]}
    metric, higher = selection.RANK_BY[cfg.rank_by]
    eligible = int(np.isfinite(scores[metric]).sum())
    if cfg.keep > eligible:
        raise InputError(
            f"--keep {cfg.keep} is more than the {eligible} pool prompts that could be scored "
            f"({len(skipped)} skipped: too long for the models' context)",
            fix=f"lower --keep to at most {eligible}, or lower --max-new-tokens; then run the same command with "
                "--resume (the scores are kept in --work)")
    sel = selection.select(scores[metric], cfg.keep, cfg.ood_fraction, cfg.seed, higher_is_better=higher)
    group = {i: "aligned" for i in sel.aligned} | {i: "ood" for i in sel.ood}
    replaced = write_selected(cfg, scan, done, group, sel.rank)
    summary = selection.summarize(scores, {
        "pool": [i for i in range(n) if i not in skipped], "kept": list(sel.kept), "aligned": list(sel.aligned),
        "ood": list(sel.ood)})
    aligned_scores = scores[metric][list(sel.aligned)]
    cutoff = (aligned_scores.min() if higher else aligned_scores.max()) if len(aligned_scores) else None
    previous = work.path / "selection.json"
    if not models and previous.exists():
        try:
            models = json.loads(previous.read_text()).get("models") or {}
        except ValueError:
            models = {}
    warnings = list(models.get("preflight_warnings", [])) + list(models.get("vocab_warnings", []))
    if replaced:
        warnings.append(f"{replaced} kept record(s) already had an {SCORE_FIELD!r} field (an earlier selection's "
                        "output used as the pool?); it was replaced with this selection's scores")
    if skipped:
        warnings.append(f"{len(skipped)} pool prompt(s) were not scored: prompt + --max-new-tokens exceed the "
                        "models' context (listed in scores.jsonl with 'skipped')")
    lengths = [done[i]["response_length_mean"] for i in range(n) if "response_length_mean" in done[i]]
    doc = {
        "kind": "select",
        "schema_version": 1,
        "tool_version": __version__,
        "created_at": created_at,
        "config": cfg.to_dict(),
        "environment": env,
        "models": models,
        "pool": {"source": scan.path, "sha256": scan.sha256, "count": n, "scored": n - len(skipped),
                 "skipped": len(skipped), "reused_scores": reused,
                 "response_length_mean": float(np.mean(lengths)) if lengths else None},
        "selection": {"keep": cfg.keep, "ood_fraction": cfg.ood_fraction, "aligned": len(sel.aligned),
                      "ood": len(sel.ood), "rank_by": cfg.rank_by, "rank_metric": metric,
                      "higher_is_aligned": higher, "aligned_cutoff": None if cutoff is None else float(cutoff),
                      "seed": cfg.seed, "out": cfg.out},
        "summary": summary,
        "throughput": clock.rates(),
        "timings": {"total_seconds": time.perf_counter() - started},
        "warnings": warnings,
    }
    atomic_write_text(work.path / "selection.json", dumps(doc))
    return doc


def write_selected(cfg: SelectConfig, scan, done: dict[int, dict], group: dict[int, str],
                   rank: dict[int, int]) -> int:
    """Stream the pool again and write the kept records, in pool order, with ``SCORE_FIELD`` added; atomically.
    Returns how many records already had that field."""
    out = Path(cfg.out).expanduser()
    replaced = 0
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as e:
        raise OutputError(f"cannot write --out {out}: {e.strerror or e}",
                          fix="pass a writable path for --out, then run the same command with --resume (the "
                              "scores are kept in --work)") from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for rec in iter_pool(cfg.pool):
                if rec.index >= scan.count or rec.digest != scan.digests[rec.index]:
                    raise InputError(f"{cfg.pool}: line {rec.line} changed while the selection ran",
                                     fix="leave the pool unchanged during a run; run the same command with "
                                         "--resume to rescore what changed")
                if rec.index not in group:
                    continue
                d = done[rec.index]
                record = dict(rec.record)
                replaced += SCORE_FIELD in record
                record[SCORE_FIELD] = {
                    "group": group[rec.index], "rank": rank[rec.index], "rank_by": cfg.rank_by, "line": rec.line,
                    "n_states": d["n_states"], **{m: d.get(m) for m in selection.SCORE_METRICS},
                }
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return replaced

