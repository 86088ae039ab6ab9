"""bf16 autocast vs float32 forward on CPU, interleaved (fp32, bf16, fp32, bf16, ...) in one run.

Prints each pair's fp32/bf16 time ratio, their median and spread, the max |Δ log p| of bf16 vs fp32, and the
load average before and after. Model: a random-weight llama of SmolLM2-135M's shape (30 layers, hidden 576,
V = 49,152), built from config (no download). docs/performance.md records the figures.

    python benchmarks/bench_bf16_cpu.py [--pairs 7] [--tokens 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def forward(model, ids, bf16: bool) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(ids).logits
    return time.perf_counter() - t0, torch.log_softmax(logits.float(), -1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, args.tokens))
    load0 = os.getloadavg()
    forward(model, ids, False), forward(model, ids, True)  # warm-up both paths
    ratios, err = [], 0.0
    for _ in range(args.pairs):
        t32, lp32 = forward(model, ids, False)
        t16, lp16 = forward(model, ids, True)
        ratios.append(t32 / t16)
        err = max(err, float((lp32 - lp16).abs().max()))
    load1 = os.getloadavg()
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    print(f"fp32/bf16 forward time, {args.tokens} tokens, {args.threads} threads, {args.pairs} interleaved pairs: "
          f"median {statistics.median(ratios):.2f}x, quartiles {q[0]:.2f}-{q[2]:.2f}, "
          f"range {min(ratios):.2f}-{max(ratios):.2f}")
    print(f"max |delta log p| bf16 vs fp32: {err:.4f}")
    print(f"load average (1 min) before {load0[0]:.2f}, after {load1[0]:.2f}; cpu bf16 flags: "
          f"{'amx_bf16' in open('/proc/cpuinfo').read() if os.path.exists('/proc/cpuinfo') else 'unknown'}")


if __name__ == "__main__":
    main()
