"""Load probe prompts from JSONL / CSV / parquet and render them to token ids.

Every malformed input raises ``InputError`` naming the file and the line (JSONL) or row
(CSV/parquet), because a probe run is minutes of GPU time and a vague failure wastes them.
No torch import here: loading prompts must stay cheap enough to validate before any model loads.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from opd_probe.errors import InputError
from opd_probe.types import ProbePrompt

_FORMAT_FIX = (
    "Each record needs exactly one of 'prompt' (a non-empty string) or 'messages' "
    '(a list of {"role": ..., "content": ...}); optional fields are \'id\' and \'answer\'. '
    "See sample_prompts/README.md."
)
_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")


def load_prompts(path: str | Path, limit: int | None = None) -> list[ProbePrompt]:
    """Read a prompt file and return its prompts in file order (the first ``limit`` if given).

    The whole file is validated even when ``limit`` is set, so a file is either valid or not
    regardless of how many prompts a particular run uses.
    """
    path = Path(path)
    if limit is not None and limit < 1:
        raise InputError(f"prompt limit must be at least 1, got {limit}", fix="Pass a positive limit, or none.")
    if not path.is_file():
        raise InputError(
            f"prompt file not found: {path}",
            fix="Check the path; sample sets live in sample_prompts/ (e.g. sample_prompts/math.jsonl).",
        )
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        records, tabular = _read_jsonl(path), False
    elif suffix == ".csv":
        records, tabular = _read_csv(path), True
    elif suffix == ".parquet":
        records, tabular = _read_parquet(path), True
    else:
        raise InputError(
            f"{path}: unknown prompt file extension {path.suffix!r}",
            fix=f"Use one of {', '.join(_EXTENSIONS)}.",
        )

    prompts: list[ProbePrompt] = []
    seen: dict[str, str] = {}  # id -> where it was first seen, so duplicates can name both places
    for index, (where, record) in enumerate(records):
        prompt = _parse_record(record, index, f"{path}: {where}", tabular)
        if prompt.id in seen:
            raise InputError(
                f"{path}: {where}: duplicate id {prompt.id!r} (first used at {seen[prompt.id]})",
                fix="Give every prompt a unique 'id', or omit 'id' to use the record position.",
            )
        seen[prompt.id] = where
        prompts.append(prompt)

    if not prompts:
        raise InputError(f"{path}: prompt set is empty", fix=f"Add at least one prompt. {_FORMAT_FIX}")
    return prompts[:limit] if limit is not None else prompts


# --- readers: each yields (location, record dict) with absent fields left out -------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from spreadsheet exports
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not valid UTF-8 text ({e})", fix="Save the file as UTF-8.") from e


def _read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (often a trailing newline) carry no record
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(
                f"{path}: line {lineno}: invalid JSON ({e.msg} at column {e.colno})",
                fix="Each line must hold one complete JSON object (JSON Lines); "
                "a pretty-printed or array-style .json file must be rewritten one object per line.",
            ) from e
        yield f"line {lineno}", record


def _read_csv(path: Path) -> Iterator[tuple[str, Any]]:
    # Stdlib csv keeps every cell a string, so ids like "007" are not mangled into numbers.
    reader = csv.DictReader(_read_text(path).splitlines(keepends=True))
    for rowno, row in enumerate(reader, start=1):
        # An empty cell means "not given": CSV cannot tell missing from empty.
        yield f"row {rowno}", {k: v for k, v in row.items() if k is not None and v not in (None, "")}


def _read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pandas as pd  # lazy: only parquet users pay for the import

    try:
        frame = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several unrelated types for corrupt files
        raise InputError(
            f"{path}: cannot read parquet file ({e})", fix="Check that the file is a valid parquet file."
        ) from e
    for rowno, row in enumerate(frame.to_dict(orient="records"), start=1):
        record = {k: _plain(v) for k, v in row.items()}
        yield f"row {rowno}", {k: v for k, v in record.items() if not _is_missing(v)}


def _plain(value: Any) -> Any:
    """Turn numpy scalars/arrays (as pandas returns them) into plain Python values."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _is_missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


# --- record validation ---------------------------------------------------------------------------


def _parse_record(record: Any, index: int, where: str, tabular: bool) -> ProbePrompt:
    if not isinstance(record, dict):
        raise InputError(f"{where}: record is a {type(record).__name__}, not a JSON object", fix=_FORMAT_FIX)
    has_prompt = record.get("prompt") is not None
    has_messages = record.get("messages") is not None
    if has_prompt and has_messages:
        raise InputError(f"{where}: record has both 'prompt' and 'messages'", fix="Keep only one of them.")
    if not has_prompt and not has_messages:
        raise InputError(f"{where}: record has neither 'prompt' nor 'messages'", fix=_FORMAT_FIX)

    prompt = messages = None
    if has_prompt:
        prompt = record["prompt"]
        if not isinstance(prompt, str):
            raise InputError(f"{where}: 'prompt' must be a string, got {type(prompt).__name__}", fix=_FORMAT_FIX)
        if not prompt.strip():
            raise InputError(f"{where}: 'prompt' is empty", fix="Write the prompt text, or remove the record.")
    else:
        messages = _parse_messages(record["messages"], where, tabular)

    return ProbePrompt(
        id=_parse_id(record.get("id"), index, where),
        index=index,
        prompt=prompt,
        messages=messages,
        answer=_parse_answer(record.get("answer"), where),
    )


def _parse_messages(raw: Any, where: str, tabular: bool) -> tuple[tuple[str, str], ...]:
    if tabular and isinstance(raw, str):
        # A CSV/parquet cell cannot hold a list, so there 'messages' is a JSON-encoded string.
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise InputError(
                f"{where}: 'messages' is not valid JSON ({e.msg})",
                fix='Put a JSON list in the cell, e.g. [{"role": "user", "content": "Hi"}].',
            ) from e
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{where}: 'messages' must be a non-empty list", fix=_FORMAT_FIX)
    out = []
    for i, m in enumerate(raw):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise InputError(
                f"{where}: messages[{i}] must be an object with string 'role' and 'content', got {m!r:.80}",
                fix='Write each message as {"role": "user", "content": "..."}.',
            )
        out.append((m["role"], m["content"]))
    return tuple(out)


def _parse_id(raw: Any, index: int, where: str) -> str:
    if raw is None:
        return str(index)
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)  # parquet stores an int column with gaps as float
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise InputError(f"{where}: 'id' must be a string or integer, got {type(raw).__name__}", fix=_FORMAT_FIX)
    if isinstance(raw, str) and not raw.strip():
        raise InputError(f"{where}: 'id' is empty", fix="Give the record a non-empty id, or omit 'id'.")
    return str(raw)


def _parse_answer(raw: Any, where: str) -> str | None:
    if _is_missing(raw):
        return None
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)  # "42", not "42.0", so answers compare as the user wrote them
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise InputError(
            f"{where}: 'answer' must be a string or number, got {type(raw).__name__}", fix=_FORMAT_FIX
        )
    text = str(raw).strip()
    return text or None


# --- rendering ------------------------------------------------------------------------------------


def render_prompt_ids(tokenizer: Any, prompt: ProbePrompt, use_chat_template: bool = True) -> list[int]:
    """Token ids the student is conditioned on: the chat-formatted prompt, or the plain text."""
    if use_chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise InputError(
                "the model's tokenizer has no chat template, so chat prompts cannot be rendered",
                fix="Pass --no-chat-template (normal for base models) to feed the prompt text as-is.",
            )
        try:
            text = tokenizer.apply_chat_template(prompt.as_messages(), tokenize=False, add_generation_prompt=True)
        except Exception as e:  # e.g. templates that reject a 'system' role raise from Jinja
            raise InputError(
                f"prompt {prompt.id!r}: the chat template failed to render it ({e})",
                fix="Adjust the prompt's messages to what the template accepts, or pass --no-chat-template.",
            ) from e
        # The rendered template already contains BOS and role markers; adding specials would double them.
        return list(tokenizer.encode(text, add_special_tokens=False))
    if prompt.messages is not None:
        text = "\n\n".join(content for _, content in prompt.messages)
    else:
        text = prompt.prompt or ""
    return list(tokenizer.encode(text, add_special_tokens=True))


def template_hash(tokenizer: Any) -> str | None:
    """Short fingerprint of the chat template, so reports show when two models format prompts alike."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    if not isinstance(template, str):  # some tokenizers hold several named templates in a dict
        template = json.dumps(template, sort_keys=True)
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:16]


# --- candidate pools (select-prompts): streamed, any size ------------------------------------------


@dataclass(frozen=True)
class PoolRecord:
    """One record of a candidate pool: where it is, its content digest, and the record as the user wrote it."""

    line: int  # 1-based line number in the file
    index: int  # 0-based position among the pool's records (blank lines do not count)
    digest: str  # 16 hex digits of the line's blake2b hash: a resumed selection reuses scores only on a match
    record: dict  # the parsed JSON object, every field kept, in the file's order
    prompt: ProbePrompt


def _pool_lines(path: Path, sha=None) -> Iterator[tuple[int, bytes]]:
    if not path.is_file():
        raise InputError(f"pool file not found: {path}", fix="check the --pool path")
    if path.suffix.lower() not in (".jsonl", ".json"):
        raise InputError(
            f"{path}: select-prompts reads a pool as JSON Lines (.jsonl), got {path.suffix or 'no extension'!r}",
            fix="convert the pool to one JSON object per line, e.g. pandas: "
                "df.to_json('pool.jsonl', orient='records', lines=True)",
        )
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if sha is not None:
                sha.update(raw)
            yield lineno, raw


def iter_pool(path: str | Path, sha=None) -> Iterator[PoolRecord]:
    """Stream a JSONL candidate pool record by record, validating each one (the same record rules as probe
    prompts, except that ids need not be unique: a pool is addressed by line). Constant memory. ``sha``: a
    hashlib object fed every byte of the file."""
    path = Path(path)
    index = 0
    for lineno, raw in _pool_lines(path, sha):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: line {lineno}: not valid UTF-8 ({e.reason})", fix="save the file as UTF-8") from e
        if lineno == 1:
            text = text.lstrip("\ufeff")
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(
                f"{path}: line {lineno}: invalid JSON ({e.msg} at column {e.colno})",
                fix="each line must hold one complete JSON object (JSON Lines); fix or delete that line",
            ) from e
        prompt = _parse_record(record, index, f"{path}: line {lineno}", tabular=False)
        digest = hashlib.blake2b(text.strip().encode("utf-8"), digest_size=8).hexdigest()
        yield PoolRecord(line=lineno, index=index, digest=digest, record=record, prompt=prompt)
        index += 1


@dataclass(frozen=True)
class PoolScan:
    """A validated pool, without its records: count, file hash, and each record's line and digest."""

    path: str
    count: int
    sha256: str
    lines: tuple[int, ...]
    digests: tuple[str, ...]


def scan_pool(path: str | Path) -> PoolScan:
    """Validate the whole pool in one streaming pass (before any model loads) and fingerprint it."""
    path = Path(path)
    sha = hashlib.sha256()
    lines, digests = [], []
    for rec in iter_pool(path, sha):
        lines.append(rec.line)
        digests.append(rec.digest)
    if not lines:
        raise InputError(f"{path}: the pool is empty (no JSON records)",
                         fix=f"add candidate prompts, one JSON object per line. {_FORMAT_FIX}")
    return PoolScan(str(path), len(lines), sha.hexdigest(), tuple(lines), tuple(digests))

