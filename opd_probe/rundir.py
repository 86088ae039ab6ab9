"""The out directory: atomic writes, resumable parts, and loading a finished run back.

Layout of an out directory:

    config.json        the run's config (written first; --resume checks it)
    prompts.jsonl      the probe prompts as loaded (ids, texts or messages, answers)
    rollouts.jsonl     one student rollout per line (appended per finished prompt batch)
    scores/<slug>/part-<first>-<last>.npz   per-model statistics at every state, one file per finished batch
    states.parquet     one row per teacher x state with every per-state metric
    tokens.json        id -> text of every response token and of each model's top-5 ids (for reports)
    results.json       the results document (written last; its presence means the run finished)

A select-prompts work directory holds scores.jsonl (one line of per-prompt scores per pool prompt, read by
read_pool_scores), selection.json and summary.md.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .errors import InputError, OutputError
from .types import ProbeResults, Rollout

OWN_FILES = ("config.json", "rollouts.jsonl", "states.parquet", "results.json", "summary.md", "report.html",
             "verify.json", "steps.parquet", "tokens.json", "prompts.jsonl", "scores.jsonl", "selection.json")
OWN_DIRS = ("scores",)


def _clean(x: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None (strict JSON that jq reads), numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    return x


def dumps(obj: Any) -> str:
    return json.dumps(_clean(obj), indent=2, ensure_ascii=False, allow_nan=False)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(path: Path, e: OSError) -> OutputError:
    return OutputError(f"no space left on the device writing {path} ({e.strerror or e})",
                       fix="free disk space (or use a directory on another disk), then run the same command with "
                           "--resume: finished work is kept, nothing was half-written")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file next to ``path`` and rename it into place: ``path`` is whole or absent. A full
    disk raises OutputError (nothing half-written is left)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            raise disk_full_error(path, e) from e
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class OutDir:
    """One run's out directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    # -------------------------------------------------------------- preparing
    def prepare(self, config_dict: dict, resume: bool, overwrite: bool, numbers_key, flag: str = "--out") -> None:
        """Create the directory, or check it may be resumed / overwritten. Writes config.json. ``flag``: the option
        that named the directory, for messages."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise OutputError(f"{flag} {p} exists and is not a directory", fix=f"pass a directory path for {flag}")
        existing = [c.name for c in p.iterdir()] if p.is_dir() else []
        if resume:
            if not (p / "config.json").exists():
                raise OutputError(f"--resume: {p} holds no run to resume (no config.json)",
                                  fix=f"drop --resume to start a new run there, or point {flag} at the interrupted run")
            old = json.loads((p / "config.json").read_text())
            if numbers_key(old) != numbers_key(config_dict):
                diff = sorted(k for k in set(numbers_key(old)) | set(numbers_key(config_dict))
                              if numbers_key(old).get(k) != numbers_key(config_dict).get(k))
                raise OutputError(
                    f"--resume: the settings differ from the interrupted run in {p}: {', '.join(diff)}",
                    fix=f"resume with the same arguments as the original run, or use a new {flag}",
                )
        elif existing:
            if not overwrite:
                raise OutputError(
                    f"{flag} {p} is not empty; refusing to overwrite a previous run",
                    fix=f"pass a new {flag}, --resume to continue an interrupted run there, or --overwrite",
                )
            foreign = [n for n in existing if n not in OWN_FILES + OWN_DIRS and not n.startswith(".")]
            if foreign:
                raise OutputError(
                    f"--overwrite: {p} holds files opd-probe did not write ({', '.join(sorted(foreign)[:5])})",
                    fix=f"pick an empty or new {flag} directory; opd-probe only deletes its own files",
                )
            for n in existing:
                target = p / n
                if n in OWN_DIRS:
                    shutil.rmtree(target)
                elif n in OWN_FILES:
                    target.unlink()
        try:
            p.mkdir(parents=True, exist_ok=True)
            atomic_write_text(p / "config.json", dumps(config_dict))
        except OSError as e:
            raise OutputError(f"cannot write to {flag} {p}: {e.strerror or e}",
                              fix=f"pass a writable directory for {flag}") from e

    # -------------------------------------------------------------- rollouts
    def append_rollouts(self, rollouts: Iterable[Rollout]) -> None:
        lines = "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in rollouts)
        try:
            with open(self.path / "rollouts.jsonl", "a", encoding="utf-8") as f:
                f.write(lines)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a torn last line is dropped on --resume (read_rollouts)
            if e.errno in _DISK_FULL:
                raise disk_full_error(self.path / "rollouts.jsonl", e) from e
            raise

    def read_rollouts(self, samples: int | None = None) -> list[Rollout]:
        """Rollouts on disk. A torn last line (killed mid-write) is dropped; with ``samples``, so are prompts
        with fewer than ``samples`` rollouts (they are redone whole on resume)."""
        path = self.path / "rollouts.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(Rollout.from_dict(json.loads(line)))
            except (ValueError, KeyError):
                break
        if samples is not None:
            per_prompt: dict[int, int] = {}
            for r in out:
                per_prompt[r.prompt_index] = per_prompt.get(r.prompt_index, 0) + 1
            out = [r for r in out if per_prompt[r.prompt_index] == samples]
        return sorted(out, key=lambda r: r.rollout_id)

    def rewrite_rollouts(self, rollouts: list[Rollout]) -> None:
        atomic_write_text(
            self.path / "rollouts.jsonl",
            "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in rollouts),
        )

    # -------------------------------------------------------------- score parts
    def scores_dir(self, slug: str) -> Path:
        return self.path / "scores" / slug

    def write_score_part(self, slug: str, first: int, last: int, arrays: dict[str, np.ndarray]) -> None:
        """Save the statistics of rollouts first..last (inclusive, in rollout order) atomically."""
        import io

        buf = io.BytesIO()
        np.savez(buf, **{k: v for k, v in arrays.items() if v is not None})
        atomic_write_bytes(self.scores_dir(slug) / f"part-{first:07d}-{last:07d}.npz", buf.getvalue())

    def read_score_parts(self, slug: str, rollout: int | None = None) -> list[tuple[int, int, dict[str, np.ndarray]]]:
        """(first, last, arrays) of each saved part of ``slug``, in rollout order; with ``rollout``, only the part
        that holds that rollout (a report reads the few rollouts it shows). Files not named
        part-<first>-<last>.npz are not parts and are skipped."""
        d = self.scores_dir(slug)
        if not d.is_dir():
            return []
        parts = []
        for f in sorted(d.glob("part-*.npz")):
            try:
                _, a, b = f.stem.split("-")
                first, last = int(a), int(b)
            except ValueError:
                continue
            if rollout is not None and not first <= rollout <= last:
                continue
            with np.load(f) as z:
                parts.append((first, last, {k: z[k] for k in z.files}))
        return parts

    # -------------------------------------------------------------- finished results
    def write_results(self, results: ProbeResults) -> None:
        atomic_write_text(self.path / "results.json", dumps(results.to_dict()))

    def write_prompts(self, prompts) -> None:
        """The probe prompts as loaded (ids, texts, answers), so reports and --reuse need not find the file."""
        atomic_write_text(self.path / "prompts.jsonl",
                          "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in prompts))

    def write_tokens(self, strings: dict[int, str]) -> None:
        atomic_write_text(self.path / "tokens.json", json.dumps({str(k): v for k, v in strings.items()},
                                                                ensure_ascii=False))

    def write_parquet(self, name: str, frame) -> None:
        import io

        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        atomic_write_bytes(self.path / name, buf.getvalue())


def read_pool_scores(path: Path) -> dict[int, dict]:
    """select-prompts' scores.jsonl: pool index -> its score line. A torn last line (killed mid-write) is dropped."""
    if not path.exists():
        return {}
    done = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            d = json.loads(line)
            done[int(d["index"])] = d
        except (ValueError, KeyError, TypeError):
            break
    return done


def load_results(path: str | Path) -> ProbeResults:
    """Load a finished run from its out directory (or a results.json path)."""
    p = Path(path).expanduser()
    f = p / "results.json" if p.is_dir() else p
    if not f.exists():
        hint = " (config.json is there: the run did not finish; continue it with --resume)" if (
            p.is_dir() and (p / "config.json").exists()) else ""
        raise InputError(f"no results.json in {p}{hint}", fix="point at the --out directory of a finished run")
    try:
        return ProbeResults.from_dict(json.loads(f.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{f} is not a valid opd-probe results file: {e}",
                         fix="re-run the probe, or point at an intact results.json") from e
