"""Cross-tokenizer pairs predicted before their OPD outcomes exist (docs/cross-tokenizer.md). Two studies:

    pilot    five zoo pairs at the zoo's OPD lr (3e-4); predictions a9a7891, outcomes after: no teacher worked
    family   seven new pairs (lab/build_cross.py FAMILY_RECIPES, benchmarks/cross/family/models) at lr 3e-5 with
             sampled evaluation, the setting a dev exploration after the pilot found good teachers to work under

    python -m opd_probe.lab.cross_bench predict  --study family   # probe every pair -> STUDY/predictions.json; commit
    python -m opd_probe.lab.cross_bench outcomes --study family   # verify each pair (refused until predictions.json is
                                                                  # committed with the rules in force) -> STUDY/outcomes/
    python -m opd_probe.lab.cross_bench score    --study family   # the table, the trivial and single-metric rules beside

Student `zoo:student`; each teacher scored on the student's ids (`auto`) or on its own split (`text`). OPD is
verify's sampled-token loss (the only one a text-aligned pair has), chunk level through text; 3 seeds, a control
arm, the validation benchmark's works/fails rule.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

CROSS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "cross"
PROBE = dict(samples=4, max_new_tokens=96, top_k=4, continuation_depths=(0,), device="cpu", dtype="float32", seed=0)
# the zoo's ground-truth OPD settings (lab/ground_truth.py) with the sampled-token loss, 3 seeds and a control
OPD = dict(batch_prompts=8, samples=4, max_new_tokens=96, lr=3e-4, warmup_steps=20, eval_samples=1,
           eval_temperature=0.0, top_k=4, probe_top_k=4, device="cpu", dtype="float32", loss="sampled", steps=100,
           eval_every=100, seeds=3, seed=0, control=True)
OUTCOME = {"bar": 0.05, "retention_floor": -0.1}  # benchmarks/validation/spec.json's rule


@dataclass(frozen=True)
class Study:
    """A set of pairs (id, teacher, alignment), the OPD settings that label them, and where the teachers live
    (None: the zoo, `zoo:NAME`)."""

    name: str
    root: Path
    pairs: tuple
    opd: dict
    models: Path | None = None

    def teacher(self, name: str) -> str:
        return f"zoo:{name}" if self.models is None else str(self.models / name)

    def heldout_accuracy(self) -> dict:
        from ..zoo import ZOO_CROSS, ZOO_MODELS

        roots = (ZOO_MODELS, ZOO_CROSS) + ((self.models,) if self.models else ())
        return {name: acc for root in roots
                for name, acc in json.loads((root / "manifest.json").read_text())["heldout_accuracy"].items()}


PILOT = Study("pilot", CROSS_DIR, (
    ("aligned-ids", "aligned", "auto"),
    ("strong-ids", "strong", "auto"),
    ("aligned-coarse-ids", "aligned-coarse", "auto"),
    ("aligned-coarse-text", "aligned-coarse", "text"),
    ("strong-coarse-text", "strong-coarse", "text")), OPD)
FAMILY = Study("family", CROSS_DIR / "family", tuple(
    [(f"{t}-text", t, "text") for t in ("aligned-a7", "aligned-b8", "mild-a13", "mixed-b14", "same-a11", "strong-b12")]
    + [("aligned-a7-ids", "aligned-a7", "auto")]),
    # the dev exploration's settings exactly (docs/cross-tokenizer.md: lr 3e-5, verify's default sampled eval at
    # temperature 1), under which the same-tokenizer `aligned` worked; its control arm is the same one
    {**OPD, "lr": 3e-5, "eval_temperature": 1.0}, CROSS_DIR / "family" / "models")
STUDIES = {s.name: s for s in (PILOT, FAMILY)}


def rules_hash() -> str:
    """What the predictions were made with: verdict.py, thresholds.py, crossverdict.py, crossmetrics.py and the
    threshold values."""
    from ..thresholds import Thresholds
    from .validation import rules_hash as hash_of

    here = Path(__file__).resolve().parents[1]
    return hash_of(Thresholds().to_dict(), [here / f for f in ("verdict.py", "thresholds.py", "crossverdict.py",
                                                               "crossmetrics.py")])


def predict(study: Study, work: Path, write: bool = True) -> dict:
    """Probe the pairs (one student run, its rollouts reused for the text-aligned teachers) and write the
    predictions (``write``; else only return them): each pair's verdict, reasons and the numbers they read."""
    from ..config import ProbeConfig
    from ..rundir import dumps
    from ..run.probe import run_probe
    from ..zoo import ZOO_PROMPTS

    prompts = str(ZOO_PROMPTS / "probe.jsonl")
    runs = {}
    for mode in ("auto", "text"):
        teachers = tuple(dict.fromkeys(study.teacher(t) for _, t, a in study.pairs if a == mode))
        if not teachers:
            continue
        cfg = ProbeConfig(student="zoo:student", teachers=teachers, out=str(work / f"probe-{mode}"), prompts=prompts,
                          alignment=mode, overwrite=True, reuse=str(work / "probe-auto") if mode == "text" else None,
                          **PROBE)
        runs[mode] = run_probe(cfg)
    out = {"about": "made before any outcome of these pairs was measured (docs/cross-tokenizer.md)",
           "rules_hash": rules_hash(), "probe": {**PROBE, "prompts": "zoo/prompts/probe.jsonl"},
           "opd": study.opd, "outcome_rule": OUTCOME,
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pairs": {}}
    keep = ("unsupported", "chunk_unsupported", "topk_reverse_kl", "sampled_reverse_kl", "overlap_ratio", "aligned",
            "entropy_gap")
    for pid, teacher, mode in study.pairs:
        p = runs[mode].pair(study.teacher(teacher))
        base = next((c for c in p.novelty.continuation or () if c.depth == 0), None)
        out["pairs"][pid] = {
            "teacher": teacher, "alignment": mode, "status": p.verdict.status,
            "predicts_works": p.verdict.status == "go",
            "reasons": [f"{r.code}:{r.severity}" for r in p.verdict.reasons],
            "metrics": {m: p.pooled[m].mean for m in keep if m in p.pooled},
            "continuation_gain_0": base.gain if base else None}
    if write:
        study.root.mkdir(parents=True, exist_ok=True)
        (study.root / "predictions.json").write_text(dumps(out) + "\n")  # strict JSON: NaN -> null
    return out


def guard(root: Path = CROSS_DIR) -> dict:
    """The predictions, committed and made with the rules in force, or InputError."""
    from .bench import _committed
    from .validation import check_rules_hash

    path = root / "predictions.json"
    if not path.exists() or not _committed(path):
        raise InputError(f"the predictions in {root} are not committed yet",
                         fix="run `python -m opd_probe.lab.cross_bench predict --study NAME` and git commit its "
                             "predictions.json before measuring any outcome")
    pred = json.loads(path.read_text())
    check_rules_hash(pred, rules_hash())
    return pred


def run_pair(study_name: str, pid: str, teacher: str, mode: str, work: str) -> dict:
    """One pair's verify run -> its outcome record (written to STUDY/outcomes/)."""
    import torch

    from ..run.verify import VerifyConfig, run_verify
    from ..zoo import ZOO_PROMPTS
    from .bench import kept_intervals, label

    torch.set_num_threads(1)
    study = STUDIES[study_name]
    out = Path(work) / pid
    cfg = VerifyConfig(student="zoo:student", teacher=study.teacher(teacher), out=str(out), alignment=mode,
                       prompts=str(ZOO_PROMPTS / "train.jsonl"), eval_prompts=str(ZOO_PROMPTS / "heldout-hard.jsonl"),
                       retain_prompts=str(ZOO_PROMPTS / "heldout-easy.jsonl"),
                       control_cache=str(Path(work) / "control"), resume=out.exists(), **study.opd)
    t0 = time.perf_counter()
    res = run_verify(cfg)
    ex = res.experiment
    rec = {"pair": {"id": pid, "teacher": teacher, "alignment": mode}, "intervals": kept_intervals(ex),
           "accuracy": ex["accuracy"], "verify_verdict": res.outcome,
           "teacher_step0": {k: v for k, v in res.step0.items() if k != "top_k"},
           "seconds": round(time.perf_counter() - t0, 1)}
    rec["label"] = label(rec["intervals"], OUTCOME)
    path = study.root / "outcomes" / f"{pid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def outcomes(study: Study, work: Path, workers: int, log=print) -> None:
    """Every missing outcome; the first pair alone (it caches the control arm the others reuse), then the rest."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    guard(study.root)
    todo = [p for p in study.pairs if not (study.root / "outcomes" / f"{p[0]}.json").exists()]
    if not todo:
        return
    log(f"verify {todo[0][0]} (caches the control arm)")
    run_pair(study.name, *todo[0], str(work))
    rest = todo[1:]
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        for rec in pool.map(run_pair, [study.name] * len(rest), *zip(*rest), [str(work)] * len(rest)):
            log(f"{rec['pair']['id']}: {rec['label']} ({rec['seconds']:.0f} s)")


def single_metric_rules(p: dict, mode: str) -> dict[str, bool]:
    """What one line of the verdict alone would predict (works?), with the verdict's own values: the pattern line
    (`unsupported` on ids, `chunk_unsupported` on text, > 0.05 is no-go) and the novelty line (continuation gain at
    depth 0 >= thresholds.min_continuation_gain)."""
    from ..crossverdict import CROSS_UNSUPPORTED_NOGO
    from ..thresholds import Thresholds

    th = Thresholds()
    pattern = p["metrics"].get("chunk_unsupported" if mode == "text" else "unsupported")
    line = CROSS_UNSUPPORTED_NOGO if mode == "text" else th.unsupported_nogo
    gain = p["continuation_gain_0"]
    return {"pattern line only": pattern is not None and pattern <= line,
            "novelty line only": gain is not None and gain >= th.min_continuation_gain}


def score(study: Study) -> str:
    """The markdown table: prediction beside outcome per pair, then every predictor's hits on the labelled pairs
    with their Wilson intervals, and the verdict paired against each other predictor."""
    from .validation import sign_test, wilson_interval

    pred = json.loads((study.root / "predictions.json").read_text())
    acc = study.heldout_accuracy()
    student_hard = acc["student"]["hard"]
    fmt = lambda x: "–" if x is None else f"{x:+.3f}"  # noqa: E731
    lines = ["| pair | read on | probe verdict | pattern value | gain@0 | teacher hard acc | OPD gain [95%] | "
             "vs control [95%] | retention | outcome |", "|---|---|---|---|---|---|---|---|---|---|"]
    hits: dict[str, list[bool]] = {"verdict": [], "always-warn": [], "always-go": [], "teacher accuracy": [],
                                   "pattern line only": [], "novelty line only": []}
    for pid, teacher, mode in study.pairs:
        p, read_on = pred["pairs"][pid], "ids" if mode == "auto" else "text"
        f = study.root / "outcomes" / f"{pid}.json"
        o = json.loads(f.read_text()) if f.exists() else None
        pattern = p["metrics"].get("chunk_unsupported" if mode == "text" else "unsupported")
        head = (f"| {pid} | {read_on} | {p['status']} | {pattern:.3f} | {fmt(p['continuation_gain_0'])} | "
                f"{acc[teacher]['hard']:.3f} | ")
        if o is None:
            lines.append(head + "not measured | | | |")
            continue
        g, c, r = (o["intervals"][k] for k in ("teacher_vs_baseline", "teacher_vs_control",
                                               "retention_teacher_vs_baseline"))
        lines.append(head + f"{g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}] | {c['mean']:+.3f} "
                     f"[{c['low']:+.3f}, {c['high']:+.3f}] | {r['mean']:+.3f} | {o['label']} |")
        if o["label"] == "unclear":
            continue
        works = o["label"] == "works"
        said = {"verdict": p["predicts_works"], "always-warn": False, "always-go": True,
                "teacher accuracy": acc[teacher]["hard"] > student_hard + 0.1, **single_metric_rules(p, mode)}
        for k, v in said.items():
            hits[k].append(v == works)
    lines.append("")
    lines.append("Right on the labelled pairs [Wilson 95%]: " + ", ".join(
        f"{k} {sum(v)}/{len(v)} [{lo:.2f}, {hi:.2f}]" for k, v in hits.items()
        for lo, hi in [wilson_interval(sum(v), len(v))]) +
                 f" (teacher accuracy: works when the teacher's held-out hard accuracy beats the student's "
                 f"{student_hard:.2f} by 0.1+). Rules {pred['rules_hash']}.")
    paired = []
    for k, v in hits.items():
        if k != "verdict":
            wins = sum(a and not b for a, b in zip(hits["verdict"], v))
            losses = sum(b and not a for a, b in zip(hits["verdict"], v))
            paired.append(f"{k} {wins}-{losses} (p = {sign_test(wins, losses):.3f})")
    lines.append("Verdict against each, pairs where only one is right (one-sided exact sign test): " +
                 ", ".join(paired) + ".")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("predict", "outcomes", "score"))
    ap.add_argument("--study", choices=tuple(STUDIES), default="pilot")
    ap.add_argument("--work", type=Path, default=None, help="default runs/cross-STUDY")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    study, work = STUDIES[a.study], a.work or Path(f"runs/cross-{a.study}")
    if a.step == "predict":
        print(json.dumps(predict(study, work)["pairs"], indent=1))
    elif a.step == "outcomes":
        outcomes(study, work, a.workers)
    print(score(study))


if __name__ == "__main__":
    main()
