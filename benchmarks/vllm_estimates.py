"""How far the vLLM backend's top-K' estimates are from the exact values, as a function of K' (--vllm-logprobs).

Uses the transformers scorer only (exact values; no vLLM needed): SmolLM2-135M-Instruct samples rollouts at T=1,
then it and three teachers cut from its first 24, 16 and 8 layers score them with the top-256 kept. From those
top lists we form exactly what the vLLM backend forms from vLLM's top-K' (opd_probe/backends/vllm.py) and compare:

  entropy:  mean (top-K' lower bound - exact entropy), per model; and the entropy gap built from two bounds
  top-k KL: the fallback used where vLLM cannot score chosen ids (teacher log-probs outside its top-K' replaced by
            its K'-th log-prob): share of exact entries and states, and the mean KL against the exact one

Prints ratios measured in one run (not a test); the figures are recorded in docs/vllm.md.

    python benchmarks/vllm_estimates.py [--prompts 8] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

K = 16
KMAX = 256
K_PRIMES = (16, 20, 64, 128, 256)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=8, help="from each of math.jsonl and instruct.jsonl")
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()

    import numpy as np

    from opd_probe.backends.base import ModelSpec, SamplingSettings, ScoreArrays
    from opd_probe.backends.hf import HFModel
    from opd_probe.backends.vllm import entropy_lower_bound, query_from_topk
    from opd_probe.prompts import load_prompts
    from opd_probe.lab.smollm2 import smollm2_dir

    def load(layers=None):
        return HFModel.load(ModelSpec(str(smollm2_dir(num_layers=layers)), device="cpu", dtype="float32"))

    student = load()
    prompts = (load_prompts("sample_prompts/math.jsonl", limit=args.prompts)
               + load_prompts("sample_prompts/instruct.jsonl", limit=args.prompts))
    rendered = [student.render(p, True) for p in prompts]
    gens = []
    for i in range(0, len(rendered), 8):
        gens += student.generate(rendered[i:i + 8], SamplingSettings(samples=1, max_new_tokens=args.new_tokens),
                                 seed=i)
    resp = [g[0].response_ids for g in gens]
    splits = np.cumsum([len(r) for r in resp])[:-1]
    s = ScoreArrays.concat(student.score(rendered, resp, k=KMAX))
    del student
    s_ids, s_lp = s.topk_ids_LK[:, :K], s.topk_logprobs_LK[:, :K].astype(np.float64)
    w = np.exp(s_lp) / np.exp(s_lp).sum(1, keepdims=True)
    print(f"{len(s)} states ({len(prompts)} prompts x 1 sample x <= {args.new_tokens} tokens, T=1), k={K}")

    def bound(arr, kp):
        return entropy_lower_bound(arr.topk_logprobs_LK[:, :kp]).astype(np.float64)

    print("\nentropy: mean(top-K' lower bound - exact), nats")
    print("| model | exact H | " + " | ".join(f"K'={kp}" for kp in K_PRIMES) + " |")
    print("|---|---|" + "---|" * len(K_PRIMES))
    print(f"| student (30 layers) | {s.entropy_L.mean():.3f} | "
          + " | ".join(f"{np.mean(bound(s, kp) - s.entropy_L):+.3f}" for kp in K_PRIMES) + " |")
    rows_gap, rows_kl = [], []
    for layers in (24, 16, 8):
        m = load(layers)
        t = ScoreArrays.concat(m.score(rendered, resp, k=KMAX, query_ids_LQ=np.split(s_ids, splits)))
        del m
        print(f"| teacher ({layers} layers) | {t.entropy_L.mean():.3f} | "
              + " | ".join(f"{np.mean(bound(t, kp) - t.entropy_L):+.3f}" for kp in K_PRIMES) + " |")
        gap = np.abs(t.entropy_L - s.entropy_L).mean()
        rows_gap.append(f"| {layers} layers | {gap:.3f} | " + " | ".join(
            f"{np.abs(bound(t, kp) - bound(s, kp)).mean() - gap:+.3f}" for kp in K_PRIMES) + " |")
        kl_exact = (w * (s_lp - t.query_logprobs_LQ)).sum(1)
        cells = []
        for kp in K_PRIMES:
            q, exact = query_from_topk(s_ids, t.topk_ids_LK[:, :kp], t.topk_logprobs_LK[:, :kp],
                                       np.concatenate(resp), t.sampled_logprob_L)
            kl = (w * (s_lp - q)).sum(1)
            assert (kl <= kl_exact + 1e-4).all()  # a lower bound, state by state
            cells.append(f"{exact.mean():.2f} / {exact.all(1).mean():.2f} / {kl.mean() / kl_exact.mean() - 1:+.0%}")
        rows_kl.append(f"| {layers} layers | {kl_exact.mean():.2f} | " + " | ".join(cells) + " |")
    print("\nentropy gap |H(q) - H(p)| from two bounds minus the exact gap, nats")
    print("| teacher | exact gap | " + " | ".join(f"K'={kp}" for kp in K_PRIMES) + " |")
    print("|---|---|" + "---|" * len(K_PRIMES))
    print("\n".join(rows_gap))
    print("\ntop-k reverse KL without chosen-id scoring: exact entries / exact states / KL bias (lower bound)")
    print("| teacher | exact KL | " + " | ".join(f"K'={kp}" for kp in K_PRIMES) + " |")
    print("|---|---|" + "---|" * len(K_PRIMES))
    print("\n".join(rows_kl))


if __name__ == "__main__":
    main()
