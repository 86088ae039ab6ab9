"""Peak memory of one `verify` training step: the chunked head (run/opd_step.py) against the naive step.

    python benchmarks/bench_verify_memory.py [--vocab 150000] [--batches 4 16] [--length 128] [--reps 2]

A llama built from config (random weights, no download) with a 150k-token vocabulary and a small hidden size, so
the output head dominates as it does for real students (151,936 tokens for Qwen). One step = forward + backward of
the top-k surrogate (the control arm's, which exercises the same head path as the teacher arm's, without a teacher)
over ``batch`` responses of ``length`` tokens.

Memory: on CUDA torch.cuda.max_memory_allocated around the step; on CPU tracemalloc cannot see torch's allocator,
so each configuration runs in its own subprocess and reports its resident-set peak (ru_maxrss) minus its resident
set just before the step. The two sides are interleaved (A B A B ...) and the median of the paired ratios
chunked / naive is printed with every measurement.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(vocab: int, hidden: int, device: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from opd_probe.backends.hf import HFModel, LogitTransform

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(device).eval()
    s = HFModel.__new__(HFModel)  # the attributes the training step uses; no tokenizer needed
    s.model, s.device, s.head_device, s.vocab_size = model, torch.device(device), torch.device(device), vocab
    s.transform = LogitTransform(cfg)

    class Tok:
        pad_token_id = 0

    s.tokenizer = Tok()
    return s


def rss_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def child(mode: str, batch: int, length: int, vocab: int, hidden: int, device: str) -> dict:
    import resource

    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    from opd_probe.run.opd_step import control_loss

    s = build(vocab, hidden, device)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, vocab, (16,), generator=g).tolist() for _ in range(batch)]
    responses = [torch.randint(1, vocab, (length,), generator=g).tolist() for _ in range(batch)]
    # warm the allocator and create the .grad buffers with a tiny step, so both sides start from the same state
    control_loss(s, prompts[:1], [r[:4] for r in responses[:1]], 16, "topk", chunked=True)[0].backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    t0 = time.perf_counter()
    surrogate, _ = control_loss(s, prompts, responses, 16, "topk", chunked=(mode == "chunked"))
    surrogate.backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"mode": mode, "batch": batch, "positions": batch * length, "extra_bytes": peak,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=150_000)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, b, n, v, h, dev = args.child
        print(json.dumps(child(mode, int(b), int(n), int(v), int(h), dev)))
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, device {args.device}, "
          f"V={args.vocab}, hidden={args.hidden}, length={args.length}")
    for batch in args.batches:
        ratios = []
        for rep in range(args.reps):
            pair = {}
            for mode in ("naive", "chunked"):  # A B A B: interleaved, so drift hits both sides alike
                out = subprocess.run([sys.executable, __file__, "--child", mode, str(batch), str(args.length),
                                      str(args.vocab), str(args.hidden), args.device],
                                     capture_output=True, text=True, env=env, check=True)
                pair[mode] = json.loads(out.stdout.strip().splitlines()[-1])
                r = pair[mode]
                print(f"batch {batch:3d} ({r['positions']:5d} positions) rep {rep} {mode:8s} extra "
                      f"{r['extra_bytes'] / 2**20:8.1f} MiB  {r['seconds']:.2f} s", flush=True)
            ratios.append(pair["chunked"]["extra_bytes"] / pair["naive"]["extra_bytes"])
        print(f"batch {batch}: median chunked/naive peak ratio {statistics.median(ratios):.3f} "
              f"(pairs: {', '.join(f'{x:.3f}' for x in ratios)})", flush=True)


if __name__ == "__main__":
    main()
