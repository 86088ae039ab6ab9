"""A teacher served over HTTP (vLLM / SGLang OpenAI-compatible completions; docs/endpoint.md).

The shell around served.py: an HTTP client (urllib: no new dependency) with a concurrency limit, timeouts and
retries with backoff on 429 / 5xx / dropped connections / truncated answers, the ``ServedModel`` backend, and the
serving preflight's measurements. The API key comes from $OPD_PROBE_API_KEY only and is never stored or printed.

Scoring is the vLLM backend's (docs/vllm.md): one completions request per prompt + response with
``prompt_logprobs=K'``; the answer's rows go through the same converters (backends/vllm.py), so the same values are
exact and the same are bounded. Tokens are rendered, decoded and compared locally with the served model's
tokenizer (``--teacher-tokenizer``, by default the student's), checked against the server's /tokenize.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from ..errors import InputError, ModelLoadError
from ..prompts import template_hash
from ..served import (API_KEY_ENV, Endpoint, ServedFacts, backoff_delays, logprob_cap_from_error, parse_endpoint,
                      json_position_arrays, retry_after_seconds, retryable, server_root, top_mass_excess)
from .base import Generation, ModelSpec, SamplingSettings, ScoreArrays
from .loading import TokenizerMethods, folder_eos_ids

HOW_ENTROPY = ("served teacher: the server returns top-K' log-probs only: entropy is the lower bound "
               "-Σ_top p log p - r log p_(K') (tail mass r), K'={kprime}")
HOW_QUERY = ("served teacher: a student top-k id outside the teacher's top-{kprime} gets the teacher's {kprime}-th "
             "log-prob, an upper bound, so the top-k reverse KL is a lower bound at those states")


class ServedError(Exception):
    """An HTTP exchange that failed after its retries; ``status`` None = no HTTP answer at all."""

    def __init__(self, status: int | None, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Client:
    """JSON over HTTP to one server: retries with backoff, a timeout per request, at most ``concurrency``
    requests in flight (the caller's thread pool)."""

    def __init__(self, endpoint: Endpoint, timeout: float = 300.0, retries: int = 5, concurrency: int = 8,
                 backoff: float = 0.5, sleep=time.sleep):
        self.endpoint = endpoint
        self.timeout = timeout
        self.retries = retries
        self.concurrency = max(1, concurrency)
        self.delays = backoff_delays(retries, backoff)
        self.sleep = sleep
        self.retried = 0  # retries so far (the model's info reports them: a flaky server shows)

    def _headers(self) -> dict:
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(API_KEY_ENV)
        if key:
            h["Authorization"] = f"Bearer {key}"
        return h

    def _once(self, url: str, body: dict | None) -> tuple[int | None, dict | None, str, str | None]:
        """(status, parsed answer, error text, Retry-After) of one attempt."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, headers=self._headers(), method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                raw = r.read()
            return r.status, json.loads(raw), "", None
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")[:2000]
            return e.code, None, _error_text(text) or e.reason, e.headers.get("Retry-After")
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
            return None, None, f"{type(e).__name__}: {getattr(e, 'reason', e)}", None
        except ValueError as e:  # a truncated or non-JSON body
            return None, None, f"the answer is not valid JSON ({e})", None

    def call(self, path: str, body: dict | None = None, root: bool = False) -> dict:
        """GET (body None) or POST ``path`` under the API root (``root``: under the server root); ServedError after
        the retries, or at once for an answer no retry can change (400, 401, 404...)."""
        url = (server_root(self.endpoint.base) if root else self.endpoint.base) + path
        for attempt in range(self.retries + 1):
            status, answer, error, after = self._once(url, body)
            if answer is not None and status is not None and status < 400:
                return answer
            if not retryable(status) or attempt == self.retries:
                where = f"HTTP {status}" if status else "no answer"
                tries = f" after {attempt + 1} tries" if attempt else ""
                raise ServedError(status, f"{url}: {where}{tries}: {error}")
            self.retried += 1
            self.sleep(retry_after_seconds(after, self.delays[attempt]))
        raise AssertionError("unreachable")  # pragma: no cover

    def map(self, fn, items: Sequence) -> list:
        """``fn`` over ``items`` with at most ``concurrency`` requests in flight, results in order."""
        if len(items) <= 1 or self.concurrency == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(fn, items))


def _error_text(text: str) -> str:
    """The message of an OpenAI-style error answer ({"error": {"message"}} or {"message"}), else the text."""
    try:
        d = json.loads(text)
    except ValueError:
        return text.strip()
    err = d.get("error", d) if isinstance(d, dict) else d
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err)


def _served_error(e: ServedError, role: str, label: str) -> ModelLoadError:
    return ModelLoadError(f"the served {role} {label} failed: {e.message}",
                          fix="check the server is up (its log), or rerun with --resume: score parts already "
                              "saved are kept; --request-timeout raises the per-request limit")


def listed_models(client: Client) -> list[dict]:
    return list(client.call("/models").get("data") or [])


def pick_model(endpoint: Endpoint, listed: list[dict]) -> str | None:
    """The model name requests use: the one named, if listed; the only one listed when none is named."""
    names = [m.get("id") for m in listed]
    if endpoint.model is None:
        return names[0] if len(names) == 1 else None
    return endpoint.model if endpoint.model in names else None


def score_request(model: str, ids: Sequence[int], kprime: int, temperature: float = 1.0) -> dict:
    """A scoring request: prompt log-probs over ``ids``, one (discarded) generated token."""
    return {"model": model, "prompt": [int(i) for i in ids], "max_tokens": 1, "temperature": temperature,
            "prompt_logprobs": int(kprime)}


def prompt_rows(answer: dict) -> list | None:
    """A scoring answer's prompt log-prob rows (JSON, vLLM's layout), None when it has none."""
    choices = answer.get("choices") or [{}]
    return choices[0].get("prompt_logprobs")


def probe_logprobs_cap(client: Client, model: str, ids: Sequence[int], kprime: int) -> tuple[int | None, list | None]:
    """(the largest K' <= kprime the server accepts, the rows of that request); (None, None) when it returns no
    prompt log-probs. A 400 naming the server's cap is retried once at that cap."""
    try:
        return kprime, prompt_rows(client.call("/completions", score_request(model, ids, kprime)))
    except ServedError as e:
        cap = logprob_cap_from_error(e.message) if e.status == 400 else None
        if cap is None or cap >= kprime or cap < 1:
            raise
    return cap, prompt_rows(client.call("/completions", score_request(model, ids, cap)))


def _max_diff(a: list, b: list) -> float:
    """The largest |difference| of a log-prob both answers hold at a position."""
    worst = 0.0
    for ra, rb in zip(a[1:], b[1:]):
        if ra is None or rb is None:
            continue
        for tid, v in ra.items():
            if tid in rb:
                worst = max(worst, abs(v["logprob"] - rb[tid]["logprob"]))
    return worst


def served_facts(path: str, tokenizer, texts: Sequence[str], sample_ids: Sequence[int], kprime: int,
                 timeout: float = 60.0) -> ServedFacts:
    """The serving preflight (served.py serving_findings reads it): reachable, model listed, /tokenize agrees with
    the local tokenizer on ``texts``, the largest K' it returns, raw (normalised, temperature-independent) and
    repeatable prompt log-probs on ``sample_ids``. Never raises for a server problem: it becomes a fact."""
    t0 = time.perf_counter()
    try:
        endpoint = parse_endpoint(path)
    except ValueError as e:
        return ServedFacts(label=path, problem=f"served teacher {e}", problem_fix="name it "
                           f"http(s)://HOST:PORT/v1#MODEL; an API key goes in ${API_KEY_ENV}, never in the URL")
    client = Client(endpoint, timeout=timeout, retries=3)  # a busy server (429) is no preflight failure
    try:
        listed = listed_models(client)
    except ServedError as e:
        return ServedFacts(label=endpoint.label, problem=f"served teacher {endpoint.label} is not reachable: "
                           f"{e.message}")
    model = pick_model(endpoint, listed)
    names = tuple(str(m.get("id")) for m in listed)
    if model is None:
        return ServedFacts(label=endpoint.label, listed=names)
    card = next(m for m in listed if m.get("id") == model)
    facts = dict(label=endpoint.label, listed=names, model=model, max_model_len=card.get("max_model_len"))
    mismatch, checked, has_tokenize = None, 0, True
    for text in texts:
        try:
            got = client.call("/tokenize", {"model": model, "prompt": text, "add_special_tokens": False},
                              root=True).get("tokens")
        except ServedError as e:
            if e.status in (404, 405):
                has_tokenize = False
                break
            return ServedFacts(**facts, problem=f"{endpoint.label} /tokenize failed: {e.message}")
        checked += 1
        if list(got or []) != tokenizer.encode(text, add_special_tokens=False):
            mismatch = text
            break
    facts.update(texts_checked=checked, tokenize_endpoint=has_tokenize, token_mismatch=mismatch)
    try:
        cap, rows = probe_logprobs_cap(client, model, sample_ids, kprime)
        if rows is None:
            return ServedFacts(**facts, logprobs_missing=True, seconds=time.perf_counter() - t0)
        cooler = prompt_rows(client.call("/completions", score_request(model, sample_ids, cap, temperature=0.5)))
        again = prompt_rows(client.call("/completions", score_request(model, sample_ids, cap)))
    except ServedError as e:
        return ServedFacts(**facts, problem=f"{endpoint.label}: a scoring request failed: {e.message}")
    _, _, top_lp = json_position_arrays(rows, 1, len(sample_ids) - 1, cap, sample_ids[1:])
    return ServedFacts(**facts, logprobs_cap=cap, mass_excess=top_mass_excess(top_lp),
                       temperature_shift=_max_diff(rows, cooler or rows), repeat_diff=_max_diff(rows, again or rows),
                       seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------ the backend
class ServedModel(TokenizerMethods):
    """A served teacher behind the Backend interface (backends/base.py)."""

    schedules_own_batches = True  # the server schedules requests; the pipeline hands over whole score parts

    def __init__(self, client: Client, model: str, card: dict, tokenizer, spec: ModelSpec, role: str, kprime: int,
                 tokenizer_path: str):
        self.client = client
        self.model = model
        self.card = card
        self.tokenizer = tokenizer
        self.tokenizer_path = tokenizer_path
        self.spec = spec
        self.role = role
        self.kprime = kprime
        self.vocab_size = len(tokenizer)
        self._eos: list[int] | None = None
        self.info = self._info()

    @classmethod
    def load(cls, spec: ModelSpec, role: str = "teacher") -> "ServedModel":
        from .loading import load_tokenizer, resolve_model_path

        try:
            endpoint = parse_endpoint(spec.path)
        except ValueError as e:
            raise InputError(f"served {role}: {e}", fix="name it http(s)://HOST:PORT/v1#MODEL") from e
        if not spec.served_tokenizer:
            raise InputError(f"served {role} {endpoint.label}: no local tokenizer to render and decode with",
                             fix="pass --teacher-tokenizer PATH (a local copy of the served model's tokenizer)")
        tok_spec = ModelSpec(path=spec.served_tokenizer, trust_remote_code=spec.trust_remote_code)
        tok_path = resolve_model_path(tok_spec, role)
        tokenizer = load_tokenizer(tok_path, tok_spec, role)
        client = Client(endpoint, timeout=spec.request_timeout, concurrency=spec.request_concurrency)
        try:
            listed = listed_models(client)
        except ServedError as e:
            raise _served_error(e, role, endpoint.label) from e
        model = pick_model(endpoint, listed)
        if model is None:
            names = ", ".join(str(m.get("id")) for m in listed) or "none"
            raise InputError(f"served {role} {endpoint.label}: the server does not serve that model (it lists: "
                             f"{names})", fix="name a listed model after '#': http://HOST:PORT/v1#MODEL")
        k = spec.top_k or 0
        if k > len(tokenizer):
            raise InputError(f"--top-k {k} is larger than the {role}'s vocabulary ({len(tokenizer)} tokens)",
                             fix=f"use --top-k {min(16, len(tokenizer))} (the paper's default is 16)")
        kprime = min(max(k, spec.vllm_logprobs), len(tokenizer))
        sample = tokenizer.encode("Hello", add_special_tokens=False)[:4] or [0]
        try:
            cap, rows = probe_logprobs_cap(client, model, [sample[0]] + sample, kprime)
        except ServedError as e:
            raise _served_error(e, role, endpoint.label) from e
        if rows is None:
            raise ModelLoadError(f"served {role} {endpoint.label} returned no prompt log-probs",
                                 fix="serve the teacher with vLLM or SGLang (completions with prompt_logprobs)")
        if cap < k:
            raise InputError(f"served {role} {endpoint.label} returns at most {cap} log-probs per position, fewer "
                             f"than --top-k {k}", fix=f"start the server with --max-logprobs {kprime}")
        card = next(m for m in listed if m.get("id") == model)
        return cls(client, model, card, tokenizer, spec, role, cap, tok_path)

    def close(self) -> None:
        pass  # nothing held: the server keeps running

    def _info(self) -> dict:
        from .loading import vocab_hash

        return {
            "path": self.spec.path, "revision": None, "architecture": "served", "model_type": None,
            "dtype": None, "device": "server", "vocab_size": self.vocab_size, "head_size": None,
            "context_length": self.context_length(), "tokenizer_hash": vocab_hash(self.tokenizer.get_vocab()),
            "chat_template_hash": template_hash(self.tokenizer), "eos_token_ids": self.eos_ids(),
            "backend": "served", "served_model": self.model, "server": self.client.endpoint.base,
            "tokenizer_path": self.tokenizer_path, "logprobs_per_position": self.kprime, "exact_id_scoring": False,
            "request_concurrency": self.client.concurrency, "request_timeout_s": self.client.timeout,
            "requests_retried": self.client.retried,
            "approximations": {"entropy": HOW_ENTROPY.format(kprime=self.kprime),
                               "query": HOW_QUERY.format(kprime=self.kprime)},
            "normalised_over": "the served model's output head",
        }

    def vocab(self) -> dict[str, int]:
        return self.tokenizer.get_vocab()

    def context_length(self) -> int | None:
        n = self.card.get("max_model_len")
        return None if n is None else int(n) - 1  # a scored sequence plus the one token the server generates

    def eos_ids(self) -> list[int]:
        if self._eos is None:
            self._eos = folder_eos_ids(self.tokenizer, self.tokenizer_path)
        return self._eos

    def _call(self, body: dict) -> dict:
        try:
            return self.client.call("/completions", body)
        except ServedError as e:
            raise _served_error(e, self.role, self.client.endpoint.label) from e
        finally:
            self.info["requests_retried"] = self.client.retried

    def generate(self, prompt_ids: Sequence[Sequence[int]], settings: SamplingSettings,
                 seed: int) -> list[list[Generation]]:
        """``settings.samples`` responses per prompt at the plain softmax, seeded per request as the vLLM backend
        seeds (seed + i * samples)."""
        eos = self.eos_ids()
        greedy = settings.temperature == 0

        def one(i: int) -> list[Generation]:
            body = {"model": self.model, "prompt": [int(t) for t in prompt_ids[i]], "n": 1 if greedy else
                    settings.samples, "max_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                    "top_p": 1.0 if greedy else settings.top_p, "top_k": -1, "seed": (seed + i * settings.samples)
                    % (2**63), "stop_token_ids": eos, "return_token_ids": True, "skip_special_tokens": False,
                    "ignore_eos": False}
            gens = []
            for c in sorted(self._call(body).get("choices") or [], key=lambda c: c.get("index", 0)):
                ids = tuple(int(t) for t in c.get("token_ids") or ())
                if c.get("finish_reason") == "stop":
                    if not ids or ids[-1] not in eos:  # some servers drop the stop token from token_ids
                        ids = ids + (eos[0],)
                    gens.append(Generation(ids, "stop"))
                else:
                    gens.append(Generation(ids, "length"))
            return gens * settings.samples if greedy else gens

        return self.client.map(one, list(range(len(prompt_ids))))

    def score(self, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], k: int,
              query_ids_LQ: Sequence[np.ndarray] | None = None) -> list[ScoreArrays]:
        """One prompt-log-prob request per (prompt + response), ``concurrency`` in flight."""
        from .vllm import score_arrays_from_positions

        if k > self.kprime:
            raise InputError(f"k={k} exceeds the {self.kprime} log-probs per position the server returns",
                             fix=f"start the server with --max-logprobs {k} or more")

        def one(i: int) -> ScoreArrays:
            p, r = list(prompt_ids[i]), list(response_ids[i])
            rows = prompt_rows(self._call(score_request(self.model, p + r, self.kprime)))
            if rows is None or len(rows) != len(p) + len(r):
                raise ModelLoadError(f"served teacher {self.client.endpoint.label}: the answer has "
                                     f"{'no' if rows is None else len(rows)} prompt log-prob rows for "
                                     f"{len(p) + len(r)} tokens", fix="serve the teacher with vLLM or SGLang")
            try:
                arrays = json_position_arrays(rows, len(p), len(r), self.kprime, r)
            except (ValueError, KeyError, TypeError) as e:
                raise ModelLoadError(f"served teacher {self.client.endpoint.label}: an answer's prompt log-probs "
                                     f"are not in vLLM's layout ({e})", fix="serve the teacher with vLLM") from e
            return score_arrays_from_positions(*arrays, r, k, self.vocab_size, None if query_ids_LQ is None else
                                               np.asarray(query_ids_LQ[i]), entropy_exact=False)

        return self.client.map(one, list(range(len(prompt_ids))))
