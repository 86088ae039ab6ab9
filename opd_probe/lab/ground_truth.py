"""Measure the zoo's ground truth: the probe's step-0 reading of every pair, and what real OPD does to it.

    python -m opd_probe.lab.ground_truth [--seeds 0 1] [--steps 100] [--workers 2]

For each pair: `opd-probe compare` (probe metrics, verdict) and `opd-probe verify` for each OPD seed (hard held-out
accuracy before/after, gap recovery, easy held-out accuracy after, to catch forgetting). Writes
opd_probe/zoo/ground_truth.json and prints the table for docs/zoo.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from ..zoo import GROUND_TRUTH, ZOO_MODELS, ZOO_PROMPTS

# (student, teacher, verify extras, expected outcome from the paper's reasoning)
PAIRS = [
    ("student", "aligned", {}, "gain"),
    ("student", "mild", {}, "smaller gain than aligned"),
    ("student", "strong", {}, "little or no gain (pattern mismatch)"),
    ("student", "strong", {"cold_start": 256}, "cold start recovers part of the gain"),
    ("student", "same-recipe", {}, "no gain (no new knowledge)"),
    ("same-recipe", "aligned", {}, "gain (the student's recipe, a second pretraining seed)"),
    ("successor", "student", {}, "regression (reverse distillation)"),
]
WORKS_GAIN = 0.10  # hard held-out accuracy gained by OPD (from its start) for a pair to count as working
# k = 29 = the zoo's whole vocabulary: the exact reverse-KL gradient, free of the top-k tail leak (docs/verify.md)
OPD = dict(batch_prompts=8, samples=4, max_new_tokens=96, lr=3e-4, warmup_steps=20, eval_samples=1,
           eval_temperature=0.0, top_k=29, device="cpu", dtype="float32")


def easy_accuracy(model_dir: str) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .build import heldout
    from .train import accuracy

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return accuracy(model, tok, heldout()[1])


def probe(out: Path) -> dict:
    """The demo's probes (demo.zoo_configs: the settings the calibration test also uses), keyed by student, teacher."""
    from .demo import zoo_configs
    from ..run.probe import run_probe

    keep = ("overlap_ratio", "overlap_mass_student", "entropy_gap", "topk_reverse_kl", "sampled_reverse_kl",
            "top1_agreement", "topk_coverage_student")
    found = {}
    for cfg in zoo_configs(out):
        res = run_probe(cfg)
        for p in res.pairs:
            found[(cfg.student.removeprefix("zoo:"), p.teacher.removeprefix("zoo:"))] = {
                "metrics": {m: p.pooled[m].mean for m in keep},
                "ci_overlap": [p.pooled["overlap_ratio"].ci_low, p.pooled["overlap_ratio"].ci_high],
                "continuation": p.novelty.to_dict().get("continuation"),
                "verdict": p.verdict.status,
                "reasons": [r.code for r in p.verdict.reasons if r.severity != "info"],
                "notes": [r.code for r in p.verdict.reasons if r.severity == "info"],
            }
    return found


def verify_pair(student: str, teacher: str, extra: dict, seed: int, steps: int, work: Path) -> dict:
    import torch

    from ..run.verify import VerifyConfig, run_verify

    torch.set_num_threads(1)  # two runs at a time on 2 cores; tiny models gain nothing from threads
    tag = f"{student}-{teacher}-cs{extra.get('cold_start', 0)}-{seed}"
    save = work / tag
    cfg = VerifyConfig(student=f"zoo:{student}", teacher=f"zoo:{teacher}", out=str(work / f"out-{tag}"),
                       prompts=str(ZOO_PROMPTS / "train.jsonl"), eval_prompts=str(ZOO_PROMPTS / "heldout-hard.jsonl"),
                       steps=steps, eval_every=steps, seed=seed, save=str(save), overwrite=True, **OPD, **extra)
    res = run_verify(cfg)
    before = res.evals[0]["accuracy"]
    start = next((e["accuracy"] for e in res.evals if e["phase"] == "cold-start"), before)
    return {"seed": seed, "hard_before": before, "hard_opd_start": start, "hard_after": res.evals[-1]["accuracy"],
            "teacher_hard": res.teacher_accuracy["accuracy"], "gap_recovery": res.gap_recovery,
            "easy_after": easy_accuracy(str(save)), "outcome": res.outcome,
            "overlap_first": res.criteria["overlap_first"], "overlap_last": res.criteria["overlap_last"],
            "kl_first": res.criteria["kl_first"], "kl_last": res.criteria["kl_last"],
            "seconds": res.timings["total_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2, help="verify runs in parallel (one thread each)")
    ap.add_argument("--out", type=Path, default=GROUND_TRUTH)
    ap.add_argument("--probe-only", action="store_true",
                    help="re-run only the probes (after a verdict-rule change) and keep the recorded OPD runs")
    args = ap.parse_args()
    if args.probe_only:
        doc = json.loads(args.out.read_text())
        with tempfile.TemporaryDirectory() as tmp:
            probes = probe(Path(tmp))
        for row in doc["pairs"]:
            row["probe"] = probes[(row["student"], row["teacher"])]
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(zoo_markdown(doc))
        return
    import torch

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    from .demo import ZOO_PROBE_SETTINGS

    doc = {"opd": {**OPD, "steps": args.steps, "seeds": args.seeds},
           "probe": {**ZOO_PROBE_SETTINGS, "prompts": "zoo/prompts/probe.jsonl"}, "pairs": []}
    manifest = json.loads((ZOO_MODELS / "manifest.json").read_text())
    doc["zoo_heldout_accuracy"] = manifest["heldout_accuracy"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        probes = probe(work / "probe")
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=args.workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {(i, s): pool.submit(verify_pair, st, te, ex, s, args.steps, work)
                       for i, (st, te, ex, _) in enumerate(PAIRS) for s in args.seeds}
            results = {key: f.result() for key, f in futures.items()}
        for i, (student, teacher, extra, expected) in enumerate(PAIRS):
            runs = [results[(i, s)] for s in args.seeds]
            row = {"student": student, "teacher": teacher, "cold_start": extra.get("cold_start", 0),
                   "expected": expected, "probe": probes[(student, teacher)], "runs": runs,
                   "hard_delta_mean": float(np.mean([r["hard_after"] - r["hard_before"] for r in runs])),
                   # OPD "works" for a pair when every seed gains and the mean gain is at least WORKS_GAIN
                   "works": all(r["hard_after"] - r["hard_opd_start"] > 0 for r in runs)
                   and float(np.mean([r["hard_after"] - r["hard_opd_start"] for r in runs])) >= WORKS_GAIN,
                   "easy_after_mean": float(np.mean([r["easy_after"] for r in runs]))}
            doc["pairs"].append(row)
            print(f"{student} <- {teacher} cs={row['cold_start']}: hard {runs[0]['hard_before']:.2f} -> "
                  f"{[round(r['hard_after'], 2) for r in runs]}  probe {row['probe']['verdict']} "
                  f"{row['probe']['reasons']}", flush=True)
    doc["seconds"] = time.perf_counter() - t0
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"ground truth in {doc['seconds']:.0f} s -> {args.out}")
    print(zoo_markdown(doc))



def zoo_markdown(doc: dict) -> str:
    """docs/zoo.md's ground-truth table from ground_truth.json."""
    def f(x, d=2):
        return "–" if x is None else f"{x:.{d}f}"

    lines = [
        "| student ← teacher | expected (paper) | probe verdict (reasons) | overlap | mass | top-k KL | gain@0 | "
        "hard acc before → after (per OPD seed) | Δ hard (mean) | gap recovery | easy after | observed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in doc["pairs"]:
        p, runs = row["probe"], row["runs"]
        cont = {c["depth"]: c for c in (p["continuation"] or [])}
        name = f"{row['student']} ← {row['teacher']}" + (f" (cold start {row['cold_start']})" if row["cold_start"]
                                                          else "")
        after = ", ".join(f(r["hard_after"]) for r in runs)
        start = runs[0]["hard_opd_start"]
        grs = [r["gap_recovery"] for r in runs if r["gap_recovery"] is not None]
        lines.append(
            f"| {name} | {row['expected']} | {p['verdict']} ({', '.join(p['reasons']) or '–'}) | "
            f"{f(p['metrics']['overlap_ratio'])} | {f(p['metrics']['overlap_mass_student'])} | "
            f"{f(p['metrics']['topk_reverse_kl'], 3)} | {f(cont[0]['gain']) if 0 in cont else '–'} | "
            f"{f(runs[0]['hard_before'])}{' → ' + f(start) if row['cold_start'] else ''} → {after} | "
            f"{row['hard_delta_mean']:+.2f} | {f(sum(grs) / len(grs)) if grs else '–'} | "
            f"{f(row['easy_after_mean'])} | {'**works**' if row['works'] else 'fails'} "
            f"({', '.join(sorted({r['outcome'] for r in runs}))}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
