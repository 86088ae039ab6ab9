"""The cross-tokenizer pilot: five zoo pairs, predicted before their OPD outcomes exist (docs/cross-tokenizer.md).

    python -m opd_probe.lab.cross_pilot predict     # probe every pair -> benchmarks/cross/predictions.json; commit it
    python -m opd_probe.lab.cross_pilot outcomes    # verify each pair (refused until predictions.json is committed
                                                    # with the rules in force) -> benchmarks/cross/outcomes/*.json
    python -m opd_probe.lab.cross_pilot score       # the table (markdown), with the trivial predictors beside it

Student `zoo:student`; teachers scored on the student's ids (`auto`) or on their own split (`text`): the same-tokenizer
`aligned` and `strong`, and the coarse-tokenizer `aligned-coarse` both ways (the probe says it fails on ids and
works on text) and `strong-coarse` on text. OPD is verify's sampled-token loss (the only one a text-aligned pair
has), chunk level through text; 3 seeds, a control arm, the validation benchmark's works/fails rule. Five pairs
are a pilot, not a validation: they test whether the probe's two readings of one teacher come true.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import InputError

PILOT_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "cross"
PAIRS = [  # id -> (teacher, alignment)
    ("aligned-ids", "aligned", "auto"),
    ("strong-ids", "strong", "auto"),
    ("aligned-coarse-ids", "aligned-coarse", "auto"),
    ("aligned-coarse-text", "aligned-coarse", "text"),
    ("strong-coarse-text", "strong-coarse", "text"),
]
PROBE = dict(samples=4, max_new_tokens=96, top_k=4, continuation_depths=(0,), device="cpu", dtype="float32", seed=0)
# the zoo's ground-truth OPD settings (lab/ground_truth.py) with the sampled-token loss, 3 seeds and a control
OPD = dict(batch_prompts=8, samples=4, max_new_tokens=96, lr=3e-4, warmup_steps=20, eval_samples=1,
           eval_temperature=0.0, top_k=4, probe_top_k=4, device="cpu", dtype="float32", loss="sampled", steps=100,
           eval_every=100, seeds=3, seed=0, control=True)
OUTCOME = {"bar": 0.05, "retention_floor": -0.1}  # benchmarks/validation/spec.json's rule


def rules_hash() -> str:
    """What the predictions were made with: verdict.py, thresholds.py, crossverdict.py, crossmetrics.py and the
    threshold values."""
    from ..thresholds import Thresholds
    from .validation import rules_hash as hash_of

    here = Path(__file__).resolve().parents[1]
    return hash_of(Thresholds().to_dict(), [here / f for f in ("verdict.py", "thresholds.py", "crossverdict.py",
                                                               "crossmetrics.py")])


def predict(work: Path) -> dict:
    """Probe the pairs (one student run, its rollouts reused for the text-aligned teachers) and write the
    predictions: each pair's verdict, reasons and the numbers they read."""
    from ..config import ProbeConfig
    from ..rundir import dumps
    from ..run.probe import run_probe
    from ..zoo import ZOO_PROMPTS

    prompts = str(ZOO_PROMPTS / "probe.jsonl")
    runs = {}
    for mode in ("auto", "text"):
        teachers = tuple(dict.fromkeys(f"zoo:{t}" for _, t, a in PAIRS if a == mode))
        cfg = ProbeConfig(student="zoo:student", teachers=teachers, out=str(work / f"probe-{mode}"), prompts=prompts,
                          alignment=mode, overwrite=True, reuse=str(work / "probe-auto") if mode == "text" else None,
                          **PROBE)
        runs[mode] = run_probe(cfg)
    out = {"about": "made before any outcome of these pairs was measured (docs/cross-tokenizer.md)",
           "rules_hash": rules_hash(), "probe": {**PROBE, "prompts": "zoo/prompts/probe.jsonl"},
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pairs": {}}
    keep = ("unsupported", "chunk_unsupported", "topk_reverse_kl", "sampled_reverse_kl", "overlap_ratio", "aligned",
            "entropy_gap")
    for pid, teacher, mode in PAIRS:
        p = runs[mode].pair(f"zoo:{teacher}")
        base = next((c for c in p.novelty.continuation or () if c.depth == 0), None)
        out["pairs"][pid] = {
            "teacher": teacher, "alignment": mode, "status": p.verdict.status,
            "predicts_works": p.verdict.status == "go",
            "reasons": [f"{r.code}:{r.severity}" for r in p.verdict.reasons],
            "metrics": {m: p.pooled[m].mean for m in keep if m in p.pooled},
            "continuation_gain_0": base.gain if base else None}
    PILOT_DIR.mkdir(parents=True, exist_ok=True)
    (PILOT_DIR / "predictions.json").write_text(dumps(out) + "\n")  # strict JSON: NaN -> null
    return out


def guard(root: Path = PILOT_DIR) -> dict:
    """The predictions, committed and made with the rules in force, or InputError."""
    from .bench import _committed
    from .validation import check_rules_hash

    path = root / "predictions.json"
    if not path.exists() or not _committed(path):
        raise InputError("the pilot's predictions are not committed yet",
                         fix="run `python -m opd_probe.lab.cross_pilot predict` and git commit "
                             "benchmarks/cross/predictions.json before measuring any outcome")
    pred = json.loads(path.read_text())
    check_rules_hash(pred, rules_hash())
    return pred


def run_pair(pid: str, teacher: str, mode: str, work: str) -> dict:
    """One pair's verify run -> its outcome record (written to benchmarks/cross/outcomes/)."""
    import torch

    from ..run.verify import VerifyConfig, run_verify
    from ..zoo import ZOO_PROMPTS
    from .bench import kept_intervals, label

    torch.set_num_threads(1)
    out = Path(work) / pid
    cfg = VerifyConfig(student="zoo:student", teacher=f"zoo:{teacher}", out=str(out), alignment=mode,
                       prompts=str(ZOO_PROMPTS / "train.jsonl"), eval_prompts=str(ZOO_PROMPTS / "heldout-hard.jsonl"),
                       retain_prompts=str(ZOO_PROMPTS / "heldout-easy.jsonl"),
                       control_cache=str(Path(work) / "control"), resume=out.exists(), **OPD)
    t0 = time.perf_counter()
    res = run_verify(cfg)
    ex = res.experiment
    rec = {"pair": {"id": pid, "teacher": teacher, "alignment": mode}, "intervals": kept_intervals(ex),
           "accuracy": ex["accuracy"], "verify_verdict": res.outcome,
           "teacher_step0": {k: v for k, v in res.step0.items() if k != "top_k"},
           "seconds": round(time.perf_counter() - t0, 1)}
    rec["label"] = label(rec["intervals"], OUTCOME)
    path = PILOT_DIR / "outcomes" / f"{pid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def outcomes(work: Path, workers: int, log=print) -> None:
    """Every missing outcome; the first pair alone (it caches the control arm the others reuse), then the rest."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    guard()
    todo = [p for p in PAIRS if not (PILOT_DIR / "outcomes" / f"{p[0]}.json").exists()]
    if not todo:
        return
    log(f"verify {todo[0][0]} (caches the control arm)")
    run_pair(*todo[0], str(work))
    if len(todo) == 1:
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        for rec in pool.map(run_pair, *zip(*todo[1:]), [str(work)] * len(todo[1:])):
            log(f"{rec['pair']['id']}: {rec['label']} ({rec['seconds']:.0f} s)")


def score() -> str:
    """The markdown table: prediction beside outcome per pair, then the predictors' hits."""
    pred = json.loads((PILOT_DIR / "predictions.json").read_text())
    from ..zoo import ZOO_CROSS, ZOO_MODELS

    man = {name: acc for root in (ZOO_MODELS, ZOO_CROSS)
           for name, acc in json.loads((root / "manifest.json").read_text())["heldout_accuracy"].items()}
    student_hard = man["student"]["hard"]
    fmt = lambda x: "–" if x is None else f"{x:+.3f}"  # noqa: E731
    lines = ["| pair | read on | probe verdict | pattern value | gain@0 | teacher hard acc | OPD gain [95%] | "
             "vs control [95%] | retention | outcome |", "|---|---|---|---|---|---|---|---|---|---|"]
    hits = {"verdict": [], "always-warn": [], "always-go": [], "teacher accuracy": []}
    for pid, teacher, mode in PAIRS:
        p, read_on = pred["pairs"][pid], "ids" if mode == "auto" else "text"
        f = PILOT_DIR / "outcomes" / f"{pid}.json"
        o = json.loads(f.read_text()) if f.exists() else None
        pattern = p["metrics"].get("chunk_unsupported" if mode == "text" else "unsupported")
        if o is None:
            lines.append(f"| {pid} | {read_on} | {p['status']} | {pattern:.3f} | {fmt(p['continuation_gain_0'])} | "
                         f"{man[teacher]['hard']:.3f} | not measured | | | |")
            continue
        g, c, r = (o["intervals"][k] for k in ("teacher_vs_baseline", "teacher_vs_control",
                                               "retention_teacher_vs_baseline"))
        lines.append(f"| {pid} | {read_on} | {p['status']} | {pattern:.3f} | "
                     f"{fmt(p['continuation_gain_0'])} | {man[teacher]['hard']:.3f} | {g['mean']:+.3f} "
                     f"[{g['low']:+.3f}, {g['high']:+.3f}] | {c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] | "
                     f"{r['mean']:+.3f} | {o['label']} |")
        if o["label"] != "unclear":
            works = o["label"] == "works"
            hits["verdict"].append(p["predicts_works"] == works)
            hits["always-warn"].append(not works)
            hits["always-go"].append(works)
            hits["teacher accuracy"].append((man[teacher]["hard"] > student_hard + 0.1) == works)
    lines.append("")
    lines.append("Right on the labelled pairs: " + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in hits.items()) +
                 f" (teacher accuracy: works when the teacher's held-out hard accuracy beats the student's "
                 f"{student_hard:.2f} by 0.1+). Rules {pred['rules_hash']}.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("predict", "outcomes", "score"))
    ap.add_argument("--work", type=Path, default=Path("runs/cross-pilot"))
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    if a.step == "predict":
        print(json.dumps(predict(a.work)["pairs"], indent=1))
    elif a.step == "outcomes":
        outcomes(a.work, a.workers)
    print(score())


if __name__ == "__main__":
    main()
