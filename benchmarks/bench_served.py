"""Client-side cost of scoring a served teacher: decoding the server's JSON answer into score arrays, per scored
position, against the in-process vLLM engine's converter (FlatLogprobs arrays) on the same values.

A served teacher's answer carries, per position, K' + 1 entries ({"id": {"logprob", "rank", "decoded_token"}}):
about 5 KB per position at K' = 64. This script builds such answers (random ids and log-probs over a 150k
vocabulary, vLLM's layout), then times, interleaved A B A B ...: A = the engine's path (backends/vllm.py
position_arrays on flat arrays + score_arrays_from_positions), B = the served path (json.loads +
served.json_position_arrays + score_arrays_from_positions). Prints µs per position for each, the median of the
paired ratios B / A and their spread, and the machine's load. No server, no model: the network and the server's
own work come on top. Not a test: the figures go to docs/performance.md with the machine they came from.

    python benchmarks/bench_served.py [--positions 2000] [--kprime 64] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opd_probe.backends.vllm import position_arrays, score_arrays_from_positions  # noqa: E402
from opd_probe.served import json_position_arrays  # noqa: E402

VOCAB = 150_000


def answer(n: int, kprime: int, seed: int = 0):
    """(JSON text of a scoring answer over n + 1 tokens, the same values as vLLM FlatLogprobs, the token ids)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, n + 1)
    rows, flat_ids, flat_lp, starts = [None], [], [], []
    for j in range(1, n + 1):
        top = rng.choice(VOCAB, kprime, replace=False)
        lp = np.sort(rng.normal(-5, 2, kprime))[::-1]
        row = {str(int(t)): {"logprob": float(v), "rank": r + 1, "decoded_token": "tok"}
               for r, (t, v) in enumerate(zip(top, lp))}
        actual = row.get(str(int(ids[j])), {"logprob": -9.0, "rank": 500, "decoded_token": "x"})
        row.setdefault(str(int(ids[j])), actual)
        rows.append(row)
        starts.append(len(flat_ids))
        flat_ids += [int(ids[j])] + [int(t) for t in top]
        flat_lp += [actual["logprob"]] + [float(v) for v in lp]
    flat = SimpleNamespace(start_indices=[0] + starts, end_indices=[0] + [s + kprime + 1 for s in starts],
                           token_ids=flat_ids, logprobs=flat_lp)
    return json.dumps({"choices": [{"prompt_logprobs": rows}]}), flat, ids


def engine_path(flat, ids, n: int, kprime: int) -> float:
    t0 = time.perf_counter()
    arrays = position_arrays(flat, 1, n, kprime, ids[1:])
    score_arrays_from_positions(*arrays, ids[1:], 16, VOCAB, None, False)
    return time.perf_counter() - t0


def served_path(text: str, ids, n: int, kprime: int) -> float:
    t0 = time.perf_counter()
    rows = json.loads(text)["choices"][0]["prompt_logprobs"]
    arrays = json_position_arrays(rows, 1, n, kprime, ids[1:])
    score_arrays_from_positions(*arrays, ids[1:], 16, VOCAB, None, False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=2000)
    ap.add_argument("--kprime", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    text, flat, ids = answer(a.positions, a.kprime)
    load0 = os.getloadavg()[0]
    ratios, eng, srv = [], [], []
    for _ in range(a.reps):
        e = engine_path(flat, ids, a.positions, a.kprime)
        s = served_path(text, ids, a.positions, a.kprime)
        eng.append(e)
        srv.append(s)
        ratios.append(s / e)
    per = lambda xs: 1e6 * statistics.median(xs) / a.positions  # noqa: E731
    print(f"{a.positions} positions, K'={a.kprime}, answer {len(text) / 1e6:.1f} MB ({len(text) / a.positions:.0f} "
          f"bytes/position), {a.reps} interleaved pairs")
    print(f"engine converter  {per(eng):7.1f} µs/position (median)")
    print(f"served (JSON)     {per(srv):7.1f} µs/position (median)")
    print(f"served / engine   x{statistics.median(ratios):.2f} median [{min(ratios):.2f}, {max(ratios):.2f}]")
    print(f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
