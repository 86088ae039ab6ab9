"""Pure: a teacher served over HTTP (vLLM / SGLang OpenAI-compatible servers; docs/endpoint.md).

What a served teacher is named by, what its JSON answers mean as arrays, how requests are retried, and the
serving preflight's findings from facts the shell (backends/served.py) measured. No network, no torch here.

A served teacher is ``http(s)://HOST[:PORT]/v1#MODEL``: the API root and the served model name (``#MODEL`` may be
left out when the server lists exactly one model). It is scored on the student's token ids through the completions
API's ``prompt_logprobs`` over prompt + response, as the in-process vLLM backend scores (docs/vllm.md): the
sampled-token log-prob and the top-K' ids and log-probs are exact, the entropy is a lower bound from the top-K',
and a student top-k id outside the teacher's top-K' gets an upper bound.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence
from urllib.parse import urlsplit

import numpy as np

from .check_facts import Finding
from .check_facts import finding as _f

SCHEMES = ("http://", "https://")
API_KEY_ENV = "OPD_PROBE_API_KEY"  # sent as "Authorization: Bearer ..."; never read from flags, never written out
RETRY_STATUS = (408, 409, 425, 429, 500, 502, 503, 504)
# Provisional (not measured): the largest |difference| of a log-prob between two identical requests that still
# counts as deterministic. Float32 kernels on one request repeat exactly; bf16 under other batch compositions
# differs by ~1e-2 (vLLM's batch-invariance notes), which moves overlap and KL at the third decimal.
DETERMINISM_TOL = 1e-3
# Provisional: log-probs are normalised when the top-K' probabilities sum to at most 1 (plus float slack).
NORMALISED_SLACK = 1e-3


def is_served(path: str) -> bool:
    return path.startswith(SCHEMES)


@dataclass(frozen=True)
class Endpoint:
    """Where a served teacher is: the API root (``.../v1``) and the model name (None: the only one listed)."""

    base: str
    model: str | None

    @property
    def label(self) -> str:
        return f"{self.base}#{self.model}" if self.model else self.base


def parse_endpoint(path: str) -> Endpoint:
    """``http://host:8000/v1#org/model`` -> Endpoint; ValueError with the reason for anything else. Credentials in
    the URL are refused: they would end up in results.json (the key goes in OPD_PROBE_API_KEY)."""
    url, _, model = path.partition("#")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{path!r} is not an http(s) URL with a host")
    if parts.username or parts.password:
        raise ValueError(f"{url!r} carries credentials in the URL")
    if parts.query:
        raise ValueError(f"{url!r} has a query string; give the API root, e.g. http://host:8000/v1")
    base = url.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    return Endpoint(base=base, model=model or None)


def server_root(base: str) -> str:
    """The server's root (vLLM's /tokenize lives beside /v1, not under it)."""
    return base[: -len("/v1")] if base.endswith("/v1") else base


# ------------------------------------------------------------------------------------------------ responses
def json_position_arrays(rows: Sequence[dict | None], first: int, n: int, kprime: int,
                         actual_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions first..first+n-1 of a completions choice's ``prompt_logprobs`` (JSON: per prompt token None or
    {"id": {"logprob", "rank", ...}}, vLLM's layout: the top-K' by rank plus the token there) -> (actual log-prob
    (n,), top-K' ids (n, K'), top-K' log-probs (n, K'), sorted by rank), as backends/vllm.py position_arrays."""
    actual_lp = np.empty(n, np.float32)
    top_ids = np.empty((n, kprime), np.int64)
    top_lp = np.empty((n, kprime), np.float32)
    for j in range(n):
        row = rows[first + j]
        if row is None:
            raise ValueError(f"no prompt log-probs at position {first + j}")
        actual_lp[j] = row[str(int(actual_ids[j]))]["logprob"]
        ranked = sorted((v["rank"], int(t), v["logprob"]) for t, v in row.items()
                        if v.get("rank") is not None and v["rank"] <= kprime)
        if len(ranked) < kprime:
            raise ValueError(f"{len(ranked)} prompt log-probs at position {first + j}, expected {kprime}")
        top_ids[j] = [r[1] for r in ranked[:kprime]]
        top_lp[j] = [r[2] for r in ranked[:kprime]]
    return actual_lp, top_ids, top_lp


def logprob_cap_from_error(message: str) -> int | None:
    """The server's log-prob limit named in its 400 answer ("... greater than max allowed: 20"), or None."""
    m = re.search(r"max(?:imum)? allowed:?\s*(\d+)", message) or re.search(r"max_logprobs\D{0,20}(\d+)", message)
    return int(m.group(1)) if m else None


def backoff_delays(retries: int, base: float = 0.5, cap: float = 30.0) -> list[float]:
    """Seconds to wait before retry 1..retries: exponential, capped (no jitter: runs stay reproducible)."""
    return [min(cap, base * 2 ** i) for i in range(retries)]


def retry_after_seconds(header: str | None, default: float) -> float:
    """A Retry-After header in seconds (the HTTP-date form is not used by inference servers), else ``default``."""
    try:
        return max(0.0, float(header)) if header is not None else default
    except ValueError:
        return default


def retryable(status: int | None) -> bool:
    """None = no HTTP answer at all (connection refused or dropped, timeout, truncated body): worth a retry."""
    return status is None or status in RETRY_STATUS


def top_mass_excess(top_logprobs: Sequence[Sequence[float]]) -> float:
    """max over rows of (Σ top-K' probabilities − 1): > 0 means the values are not a normalised distribution's."""
    worst = -1.0
    for row in top_logprobs:
        worst = max(worst, sum(math.exp(x) for x in row if x > -1e30) - 1.0)
    return worst


# ------------------------------------------------------------------------------------------------ preflight
@dataclass(frozen=True)
class ServedFacts:
    """What the serving preflight measured (backends/served.py probe). ``problem`` set = the server could not be
    probed at all (the message says why); the rest then stay at their defaults."""

    label: str
    problem: str | None = None
    problem_fix: str | None = None  # None: start the server / check the URL
    listed: tuple[str, ...] = ()
    model: str | None = None  # the name requests use
    max_model_len: int | None = None
    texts_checked: int = 0
    tokenize_endpoint: bool = False
    token_mismatch: str | None = None  # the first text the server splits other than the local tokenizer
    logprobs_cap: int | None = None  # the largest K' the server returned (None: not probed)
    logprobs_missing: bool = False  # the answer had no prompt_logprobs at all
    mass_excess: float = 0.0  # top_mass_excess of a scored request
    temperature_shift: float = 0.0  # max |Δ log-prob| between requests at temperature 1 and 0.5
    repeat_diff: float = 0.0  # max |Δ log-prob| between two identical requests
    seconds: float = 0.0
    details: dict = field(default_factory=dict)


def serving_findings(f: ServedFacts, k: int, kprime: int) -> list[Finding]:
    """The serving preflight as findings: each failure an error naming the fix (exit 2), the measured values as
    info. ``k`` = --top-k, ``kprime`` = the log-probs per position asked for (--vllm-logprobs)."""
    name = f.label
    add = lambda level, code, msg, fix=None, **d: _f(level, code, msg, fix, name, name, **d)  # noqa: E731
    if f.problem:
        return [add("error", "served", f.problem, f.problem_fix or "start the server (e.g. vllm serve MODEL "
                    "--max-logprobs 64) and check the URL: http(s)://HOST:PORT/v1#MODEL")]
    out = []
    if f.model is None:
        listed = ", ".join(f.listed) or "none"
        return [add("error", "served-model", f"{name}: the server does not serve that model (it lists: {listed})",
                    f"name one it lists: {f.label.partition('#')[0]}#{f.listed[0] if f.listed else 'MODEL'}")]
    out.append(add("ok", "served", f"served teacher {f.model} reachable ({f.seconds:.1f} s for the preflight)",
                   max_model_len=f.max_model_len))
    if f.token_mismatch is not None:
        text = f.token_mismatch if len(f.token_mismatch) <= 60 else f.token_mismatch[:57] + "..."
        out.append(add("error", "served-tokens", f"{name}: the server's tokenizer splits {text!r} "
                       "other than the local tokenizer, so the teacher would read ids that are not the student's "
                       "tokens", "pass --teacher-tokenizer with a local copy of the served model's tokenizer; a "
                       "served teacher must share the student's token -> id map (cross-tokenizer pairs need local "
                       "weights, docs/cross-tokenizer.md)"))
    elif f.tokenize_endpoint:
        out.append(add("ok", "served-tokens", f"the server tokenizes {f.texts_checked} prompt texts exactly as the "
                       "local tokenizer (a sample, not the whole map)"))
    else:
        out.append(add("warn", "served-tokens", f"{name}: the server has no /tokenize endpoint, so its token -> id "
                       "map was not checked against the local tokenizer", "serve with vLLM or SGLang (both have "
                       "/tokenize), or make sure --teacher-tokenizer is the served model's tokenizer"))
    if f.logprobs_missing:
        out.append(add("error", "served-logprobs", f"{name}: the server returned no prompt log-probs",
                       "serve the teacher with vLLM or SGLang (completions with prompt_logprobs); hosted APIs that "
                       "only return sampled-token log-probs cannot score the student's tokens"))
        return out
    cap = f.logprobs_cap
    if cap is not None and cap < k:
        out.append(add("error", "served-logprobs", f"{name}: the server returns at most {cap} log-probs per "
                       f"position, fewer than --top-k {k}", f"start the server with --max-logprobs {max(kprime, k)}",
                       cap=cap))
    elif cap is not None and cap < kprime:
        out.append(add("warn", "served-logprobs", f"{name}: the server returns at most {cap} log-probs per position "
                       f"(asked {kprime}): entropies are bounded from the top {cap}", "start the server with "
                       f"--max-logprobs {kprime} for tighter entropy bounds", cap=cap))
    elif cap is not None:
        out.append(add("ok", "served-logprobs", f"{cap} log-probs per position", cap=cap))
    if f.mass_excess > NORMALISED_SLACK:
        out.append(add("error", "served-raw", f"{name}: the returned top-{cap} probabilities sum to "
                       f"{1 + f.mass_excess:.3f} > 1: they are not the log-softmax of the model's logits",
                       "start vLLM with --logprobs-mode raw_logprobs (the default); other servers: return raw, "
                       "unprocessed log-probs"))
    # a shift no larger than identical requests differ (a non-repeatable server) says nothing about processing
    if f.temperature_shift > max(DETERMINISM_TOL, 3 * f.repeat_diff):
        out.append(add("error", "served-raw", f"{name}: prompt log-probs change with the request's temperature "
                       f"(max |Δ| {f.temperature_shift:.3g} nats): the server returns processed log-probs, not the "
                       "temperature-1 distribution OPD's loss uses", "start vLLM with --logprobs-mode raw_logprobs; "
                       "the probe and the trainer must score the teacher at temperature 1"))
    if f.repeat_diff > DETERMINISM_TOL:
        out.append(add("warn", "served-determinism", f"{name}: two identical scoring requests differ by up to "
                       f"{f.repeat_diff:.3g} nats per log-prob", "start vLLM with --no-enable-prefix-caching "
                       "(prompt log-probs with prefix caching depend on request order); bf16 under load differs "
                       "by batch composition (VLLM_BATCH_INVARIANT=1)", repeat_diff=f.repeat_diff))
    else:
        out.append(add("ok", "served-determinism", f"repeated request identical within {DETERMINISM_TOL:g} "
                       f"(max |Δ| {f.repeat_diff:.2g})"))
    return out
