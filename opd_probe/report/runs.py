"""Finished runs as reports read them: the out directory of a compare run (results.json, states.parquet,
tokens.json, prompts.jsonl) or a verify run (verify.json), or the work directory of a select-prompts run
(selection.json). Nothing here loads a model; every unreadable file is an InputError with a fix (exit 2)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from ..rundir import load_results
from ..types import ProbeResults
from .view import short_names

NO_RUN_FIX = ("pass the --out directory of a finished `opd-probe compare` (results.json) or `verify` (verify.json) run, "
              "or the --work directory of a `select-prompts` run (selection.json)")


@dataclass
class Run:
    """One out directory: a compare run (``results``) or a verify run (``verify``, the verify.json dict)."""

    path: Path
    kind: str  # "compare" | "verify" | "select"
    results: ProbeResults | None = None
    verify: dict | None = None
    label: str = ""
    selection: dict | None = None  # select-prompts: selection.json


def _read_doc(f: Path, kind: str, what: str, keys: tuple[str, ...], fix: str) -> dict:
    """A verify.json / selection.json document, checked for its kind and top-level keys."""
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
        if (not isinstance(d, dict) or d.get("kind") != kind
                or (kind == "verify" and not isinstance(d.get("steps"), list))):
            raise ValueError(f"not a {what} document")
        for key in keys:
            d[key]  # noqa: B018 - KeyError below names the missing key
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise InputError(f"{f} is not a valid opd-probe {what} file: {e}", fix=fix) from e
    return d


def load_run(path: str | Path) -> Run:
    """Load a finished compare or verify out directory; InputError (exit 2, with a fix) when it is not one."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"no results.json, verify.json or selection.json: {p} does not exist", fix=NO_RUN_FIX)
    if not p.is_dir():
        raise InputError(f"{p} is not a directory", fix=NO_RUN_FIX)
    if (p / "results.json").exists():
        return Run(p, "compare", results=load_results(p))
    if (p / "verify.json").exists():
        return Run(p, "verify", verify=_read_doc(p / "verify.json", "verify", "verify",
                                                 ("config", "criteria", "outcome", "evals", "step0"),
                                                 "re-run `opd-probe verify`, or point at an intact verify.json"))
    if (p / "selection.json").exists():
        return Run(p, "select", selection=_read_doc(
            p / "selection.json", "select", "selection", ("config", "pool", "selection", "summary"),
            "re-run `opd-probe select-prompts ... --resume` to rewrite it"))
    hint = (" (config.json is there: the run did not finish; continue it with --resume)"
            if (p / "config.json").exists() else "")
    raise InputError(f"no results.json, verify.json or selection.json in {p}{hint}", fix=NO_RUN_FIX)


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    runs = [load_run(p) for p in paths]
    labels = short_names([str(r.path) for r in runs])
    for r in runs:
        r.label = labels[str(r.path)]
    return runs


def read_states(run: Run):
    """states.parquet as a DataFrame, or None when the run has none."""
    f = run.path / "states.parquet"
    if not f.exists():
        return None
    import pandas as pd

    try:
        return pd.read_parquet(f)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise InputError(f"{f} cannot be read: {e}", fix="re-run the probe, or restore an intact states.parquet") from e


def read_tokens(run: Run) -> dict[int, str] | None:
    """tokens.json (token id -> text), or None when the run has none."""
    f = run.path / "tokens.json"
    if not f.exists():
        return None
    try:
        return {int(k): str(v) for k, v in json.loads(f.read_text(encoding="utf-8")).items()}
    except (ValueError, AttributeError) as e:
        raise InputError(f"{f} is not a valid tokens file: {e}", fix="re-run the probe, or delete tokens.json "
                                                                      "(the report then shows token ids)") from e


def prompt_texts(results: ProbeResults, run_dir: Path) -> tuple[dict[str, str], str | None]:
    """Prompt id -> text: from the run's own prompts.jsonl (written by compare), else from the prompt file when it
    is still at its recorded path with the same sha256. The second value says why there are none."""
    own = run_dir / "prompts.jsonl"
    if own.is_file():
        from ..types import ProbePrompt

        try:
            prompts = [ProbePrompt.from_dict(json.loads(line)) for line in own.read_text().splitlines() if line]
            return {p.id: _prompt_text(p) for p in prompts}, None
        except (ValueError, KeyError) as e:
            return {}, f"{own} cannot be read ({e})"
    src, sha = results.prompts.get("source"), results.prompts.get("sha256")
    if not src or not sha:
        return {}, "the prompt file is not recorded in results.json"
    f = Path(src).expanduser()
    if not f.is_file():
        return {}, f"the prompt file {src} is not there any more"
    try:
        if hashlib.sha256(f.read_bytes()).hexdigest() != sha:
            return {}, f"the prompt file {src} changed since the run"
        from ..prompts import load_prompts

        prompts = load_prompts(f)
    except Exception as e:  # noqa: BLE001 - a report must not fail on a prompt file it only decorates with
        return {}, f"the prompt file {src} cannot be read ({e})"
    return {p.id: _prompt_text(p) for p in prompts}, None


def _prompt_text(p) -> str:
    return p.prompt if p.prompt is not None else "\n".join(f"{r}: {c}" for r, c in (p.messages or ()))
