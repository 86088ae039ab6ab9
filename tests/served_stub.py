"""A small OpenAI-compatible teacher server for the tests (loopback only): a real transformers model answers
/v1/models, /tokenize and /v1/completions in vLLM's JSON layout (prompt_logprobs rows of {"id": {"logprob",
"rank"}}, token_ids with return_token_ids), plus the failures a real server shows, switched on per test:
429 / 5xx answers, slow answers, truncated JSON, a log-prob cap, processed (temperature-scaled) log-probs,
non-repeatable scores, no /tokenize, no prompt log-probs."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


class StubTeacher:
    def __init__(self, model_dir, name: str = "teacher", max_logprobs: int = 64):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.name = name
        self.max_logprobs = max_logprobs
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.fail = []  # statuses answered to the next completions requests, one each
        self.fail_after: int | None = None  # 503 to every completions request after this many (a server gone)
        self.fail_at: dict[int, int] = {}  # completions request number (from 1) -> the status it gets
        self.delay = 0.0  # seconds before each completions answer
        self.truncate = 0  # completions answers cut mid-JSON
        self.processed = False  # prompt log-probs at the request's temperature (not raw)
        self.noise = 0.0  # logit noise, a new draw per request
        self.tokenize = True
        self.prompt_logprobs = True
        self.tokenize_offset = 0  # added to every id /tokenize returns (another token -> id map)
        self.requests = 0
        self.n_completions = 0
        self.headers: list[dict] = []

    # ------------------------------------------------------------------ answers
    def rows(self, ids: list[int], k: int, temperature: float) -> list:
        with torch.no_grad():
            logits = self.model(torch.tensor([ids])).logits[0].float()
        if self.processed and temperature > 0:
            logits = logits / temperature
        lp = torch.log_softmax(logits, dim=-1)
        vocab = len(self.tok)
        lp = lp[:, :vocab]
        rows = [None]
        for j in range(1, len(ids)):
            dist = lp[j - 1]
            if self.noise:  # another (normalised) distribution per request: a server that does not repeat
                dist = torch.log_softmax(dist + self.noise * torch.randn(dist.shape), dim=-1)
            top = torch.topk(dist, k)
            row = {str(int(t)): {"logprob": float(v), "rank": r + 1, "decoded_token": ""}
                   for r, (v, t) in enumerate(zip(top.values.tolist(), top.indices.tolist()))}
            actual = ids[j]
            if str(actual) not in row:
                rank = int((dist > dist[actual]).sum().item()) + 1
                row[str(actual)] = {"logprob": float(dist[actual]), "rank": rank, "decoded_token": ""}
            rows.append(row)
        return rows

    def generate(self, ids: list[int], body: dict) -> list[dict]:
        n, temp = int(body.get("n", 1)), float(body.get("temperature", 1.0))
        stop = set(body.get("stop_token_ids") or [])
        g = torch.Generator().manual_seed(int(body.get("seed", 0)))
        out = []
        for i in range(n):
            seq = list(ids)
            new = []
            reason = "length"
            for _ in range(int(body.get("max_tokens", 16))):
                with torch.no_grad():
                    logits = self.model(torch.tensor([seq])).logits[0, -1, :len(self.tok)].float()
                t = int(logits.argmax()) if temp == 0 else int(torch.multinomial(torch.softmax(logits / temp, -1), 1,
                                                                                 generator=g))
                seq.append(t)
                new.append(t)
                if t in stop:
                    reason = "stop"
                    break
            out.append({"index": i, "text": "", "token_ids": new, "finish_reason": reason})
        return out

    def completions(self, body: dict) -> tuple[int, dict | str]:
        with self.lock:
            self.n_completions += 1
            status = self.fail.pop(0) if self.fail else None
            if self.fail_after is not None and self.n_completions > self.fail_after:
                status = 503
            status = self.fail_at.get(self.n_completions, status)
            cut = status is None and self.truncate > 0
            self.truncate -= int(cut)
        if self.delay:
            time.sleep(self.delay)
        if status:
            return status, {"error": {"message": f"stub failure {status}"}}
        if body.get("model") != self.name:
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}}
        ids = [int(i) for i in body["prompt"]]
        k = body.get("prompt_logprobs")
        if k is not None and k > self.max_logprobs:
            return 400, {"error": {"message": f"Requested prompt logprobs of {k}, which is greater than max "
                                              f"allowed: {self.max_logprobs}"}}
        if k is not None:
            choice = {"index": 0, "text": "", "finish_reason": "length", "token_ids": [0]}
            if self.prompt_logprobs:
                choice["prompt_logprobs"] = self.rows(ids, int(k), float(body.get("temperature", 1.0)))
            answer = {"choices": [choice]}
        else:
            answer = {"choices": self.generate(ids, body)}
        text = json.dumps(answer)
        return 200, (text[: len(text) // 2] if cut else answer)


def serve(stub: StubTeacher):
    """(server, base URL); the caller shuts the server down."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, status: int, answer):
            data = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 429:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            stub.requests += 1
            stub.headers.append(dict(self.headers))
            if self.path == "/v1/models":
                return self._send(200, {"data": [{"id": stub.name, "max_model_len": 512}]})
            self._send(404, {"error": {"message": "not found"}})

        def do_POST(self):
            stub.requests += 1
            stub.headers.append(dict(self.headers))
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/tokenize" and stub.tokenize:
                ids = stub.tok.encode(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))
                return self._send(200, {"tokens": [i + stub.tokenize_offset for i in ids], "count": len(ids)})
            if self.path == "/v1/completions":
                return self._send(*stub.completions(body))
            self._send(404, {"error": {"message": "not found"}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"
