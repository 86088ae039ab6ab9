"""Run the validation benchmark (docs/validation.md), step by step and resumably, in the pre-registered order:

    python -m opd_probe.lab.bench_models                      # 1. build every model (both splits)
    python -m opd_probe.lab.bench probe --split dev           # 2. the probe's reading of every dev pair
    python -m opd_probe.lab.bench outcomes --split dev        # 3. OPD outcomes of the dev pairs (verify, 3 seeds + control)
    (fit or check the rules on dev)                           # 4. docs/validation.md says what was changed
    python -m opd_probe.lab.bench probe --split heldout       # 5. the held-out predictions, with the rules hash:
    python -m opd_probe.lab.bench predict --split heldout     #    git commit benchmarks/validation/predictions-heldout.json
    python -m opd_probe.lab.bench outcomes --split heldout    # 6. refused unless those predictions are committed and
                                                              #    were made with the current rules
    python -m opd_probe.lab.bench score                       # 7. the table (benchmarks/validation/report.json)

Every pair's outcome is its own file (outcomes/FAMILY/PAIR.json), written when its runs finish: an interrupted
`outcomes` resumes where it stopped. Settings come from benchmarks/validation/spec.json only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from ..errors import InputError
from .bench_models import BENCH_DIR
from .families import FAMILIES

SPEC = BENCH_DIR / "spec.json"


def load_spec(path: Path = SPEC) -> dict:
    return json.loads(Path(path).read_text())


def pair_id(p: dict) -> str:
    return f"{p['student']}--{p['teacher']}" + (f"--cs{p['cold_start']}" if p.get("cold_start") else "")


def split_pairs(spec: dict, split: str) -> list[dict]:
    fams = spec["split"][split]
    return [p for p in spec["pairs"] if p["family"] in fams]


def model_dir(family: str, name: str, root: Path = BENCH_DIR) -> str:
    return str(root / "models" / family / name)


def prompts_dir(family: str, root: Path = BENCH_DIR) -> Path:
    return root / "prompts" / family


# ------------------------------------------------------------------------------------------------ outcomes
def label(intervals: dict, rule: dict) -> str:
    """works / fails / unclear from the verify intervals, by spec.json's outcome rule (pure)."""
    g, c, r = (intervals[k] for k in ("teacher_vs_baseline", "teacher_vs_control", "retention_teacher_vs_baseline"))
    bar, floor = rule["bar"], rule["retention_floor"]
    if g["low"] > bar and c["low"] > 0 and r["mean"] >= floor:
        return "works"
    if g["high"] < bar or c["high"] < 0 or r["high"] < floor:
        return "fails"
    return "unclear"


def _family_dirs(p: dict) -> tuple[str, ...]:
    """FAMILY, and sampled/ below it for the sampled-token subset (``p["loss"] == "sampled"``)."""
    return (p["family"], "sampled") if p.get("loss") == "sampled" else (p["family"],)


def outcome_path(p: dict, root: Path = BENCH_DIR) -> Path:
    return root.joinpath("outcomes", *_family_dirs(p), f"{pair_id(p)}.json")


def sampled_pairs(spec: dict, split: str) -> list[dict]:
    """The secondary labels: spec's sampled_subset pairs, per family of the split, with the sampled-token loss."""
    return [{"family": fam, "cold_start": 0, "loss": "sampled", **q}
            for fam in spec["split"][split] for q in spec["sampled_subset"]["pairs"]]


def run_pair(p: dict, spec: dict, work: str, root: str) -> dict:
    """One pair's verify run (teacher arm and control, spec's seeds) -> its outcome record (written to disk)."""
    import torch

    from ..run.verify import VerifyConfig, run_verify

    torch.set_num_threads(1)
    root_p = Path(root)
    opd = dict(spec["opd"], loss=p.get("loss", spec["opd"]["loss"]))
    pdir = prompts_dir(p["family"], root_p)
    files = {k: str(pdir / opd.pop(k)) for k in ("prompts", "eval_prompts", "retain_prompts")}
    out = Path(work).joinpath(*_family_dirs(p), pair_id(p))
    cfg = VerifyConfig(student=model_dir(p["family"], p["student"], root_p),
                       teacher=model_dir(p["family"], p["teacher"], root_p), out=str(out), **files, **opd,
                       max_new_tokens=FAMILIES[p["family"]].max_new_tokens, cold_start=p.get("cold_start", 0),
                       resume=out.exists(), overwrite=False)
    t0 = time.perf_counter()
    res = run_verify(cfg)
    ex = res.experiment
    rec = {"pair": p, "intervals": kept_intervals(ex),
           "accuracy": ex["accuracy"], "gap_recovery": ex["gap_recovery"], "verify_verdict": res.outcome,
           "cold_start": [{k: r["cold_start"][k] for k in ("reached", "epochs_run", "before", "after")}
                          for r in res.arms["teacher"] if r.get("cold_start")],
           "teacher_step0": {k: v for k, v in res.step0.items() if k != "top_k"},
           "seconds": round(time.perf_counter() - t0, 1)}
    rec["label"] = label(rec["intervals"], spec["outcome"])
    path = outcome_path(p, root_p)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=1) + "\n")
    return rec


def kept_intervals(experiment: dict) -> dict:
    """The verify experiment's intervals, with the fields an outcome record keeps (the label reads them)."""
    keep = ("mean", "low", "high", "per_seed", "se_seed")
    return {k: {f: v[f] for f in keep} for k, v in experiment["intervals"].items() if v}


def _committed(path: Path) -> bool:
    """The file is tracked by git and has no uncommitted change (the pre-registration is visible in history)."""
    repo = path.resolve().parents[2]
    rel = path.resolve().relative_to(repo)
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(rel)], cwd=repo, capture_output=True)
    clean = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", str(rel)], cwd=repo)
    return tracked.returncode == 0 and clean.returncode == 0


def guard_heldout(root: Path = BENCH_DIR) -> None:
    """Held-out outcomes only after their predictions are committed, made with the rules in force now."""
    from .validation import check_rules_hash, current_rules_hash

    pred = root / "predictions-heldout.json"
    if not pred.exists() or not _committed(pred):
        raise InputError("the held-out predictions are not committed yet",
                         fix="run `python -m opd_probe.lab.bench predict --split heldout` and git commit "
                             f"{pred.name} before measuring any held-out outcome")
    check_rules_hash(json.loads(pred.read_text()), current_rules_hash())


def outcomes(spec: dict, split: str, work: Path, workers: int, root: Path = BENCH_DIR, sampled: bool = False,
             log=print) -> list[dict]:
    """Every missing outcome of the split (``sampled``: of its sampled-token subset), ``workers`` verify runs at a
    time (one thread each). The first pair of each student goes first, so its control arm is cached before the
    student's other pairs need it."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    if split == "heldout":
        guard_heldout(root)
    pairs = sampled_pairs(spec, split) if sampled else split_pairs(spec, split)
    todo = [p for p in pairs if not outcome_path(p, root).exists()]
    firsts: dict[tuple, dict] = {}
    for p in todo:  # the first pair of each student (and cold-start budget): the control arm it caches is its own
        firsts.setdefault((p["family"], p["student"], p.get("cold_start", 0)), p)
    waves = [list(firsts.values()), [p for p in todo if p not in firsts.values()]]
    done = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        for wave in waves:
            futs = {pool.submit(run_pair, p, spec, str(work), str(root)): p for p in wave}
            for f in as_completed(futs):
                rec = f.result()
                done.append(rec)
                iv = rec["intervals"]["teacher_vs_baseline"]
                log(f"{rec['pair']['family']} {pair_id(rec['pair'])}: gain {iv['mean']:+.3f} "
                    f"[{iv['low']:+.3f}, {iv['high']:+.3f}] -> {rec['label']} ({rec['seconds']:.0f} s)")
    return done


# ------------------------------------------------------------------------------------------------ probes
def probe_path(family: str, student: str, root: Path = BENCH_DIR) -> Path:
    return root / "probes" / family / f"{student}.json"


def run_probes(spec: dict, split: str, work: Path, root: Path = BENCH_DIR, records: Path | None = None,
               log=print) -> None:
    """`compare` of each student of the split with all its candidate teachers, as a user runs it; per pair the
    pooled metrics, novelty evidence and verdict are kept (``records``, default ``root``: probes/FAMILY/STUDENT.json)."""
    import pandas as pd
    import torch

    from ..config import ProbeConfig
    from ..run.probe import run_probe

    torch.set_num_threads(2)
    ps = spec["probe"]
    by_student: dict[tuple[str, str], list[str]] = {}
    for p in split_pairs(spec, split):
        by_student.setdefault((p["family"], p["student"]), [])
        if p["teacher"] not in by_student[(p["family"], p["student"])]:
            by_student[(p["family"], p["student"])].append(p["teacher"])
    for (fam, student), teachers in by_student.items():
        t0 = time.perf_counter()
        cfg = ProbeConfig(student=model_dir(fam, student, root),
                          teachers=tuple(model_dir(fam, t, root) for t in teachers), out=str(work / fam / student),
                          prompts=str(prompts_dir(fam, root) / ps["prompts"]), samples=ps["samples"],
                          top_k=ps["top_k"], max_new_tokens=FAMILIES[fam].max_new_tokens, seed=ps["seed"],
                          continuation_depths=tuple(ps["continuation_depths"]), grad_norm=ps["grad_norm"],
                          device=ps["device"], dtype=ps["dtype"], overwrite=True)
        res = run_probe(cfg)
        rows = {}
        for teacher, pair in zip(teachers, res.pairs):
            rows[teacher] = {"metrics": {m: e.mean for m, e in pair.pooled.items()},
                             "novelty": pair.novelty.to_dict(), "verdict": pair.verdict.status,
                             "reasons": [r.code for r in pair.verdict.reasons if r.severity != "info"]}
        states = pd.read_parquet(Path(cfg.out) / "states.parquet", columns=["teacher", "topk_coverage_student"])
        cov = states[states["teacher"] == states["teacher"].iloc[0]]["topk_coverage_student"].to_numpy()
        path = probe_path(fam, student, records or root)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"student": student, "family": fam, "settings": ps, "states": int(len(cov)),
                                    # the check that top-16 is not tail noise: share of partial top-k states
                                    "share_topk_coverage_below_0.99": float((cov < 0.99).mean()),
                                    "pairs": rows}, indent=1) + "\n")
        log(f"probed {fam} {student} with {len(teachers)} teachers ({time.perf_counter() - t0:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=("probe", "outcomes", "predict", "score"))
    ap.add_argument("--split", choices=("dev", "heldout"), default="dev")
    ap.add_argument("--work", type=Path, default=Path("/tmp/opd-probe-bench"),
                    help="verify / compare run folders (large; not committed)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sampled", action="store_true", help="outcomes: the sampled-token subset (secondary labels)")
    args = ap.parse_args()
    spec = load_spec()
    if args.step == "probe":
        run_probes(spec, args.split, args.work / "probes")
    elif args.step == "outcomes":
        outcomes(spec, args.split, args.work / "verify", args.workers, sampled=args.sampled)
    else:
        from .bench_score import predict, score

        if args.step == "predict":
            predict(spec, args.split)
        else:
            score(spec)


if __name__ == "__main__":
    main()
