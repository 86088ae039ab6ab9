"""The statistics glue of `verify` (pure: numpy and opd_probe/experiment.py, no models): the descriptive trends
of an arm-seed, each arm's final scores and accuracy curves, and ``summarise``, the experiment's intervals,
decision and gap recovery (docs/verify.md "Statistics")."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from .. import experiment as ex


# ------------------------------------------------------------------------------------------------- trends
def trends(steps: list[dict]) -> dict:
    """Descriptive only (they decide nothing): the mean overlap ratio and top-k KL over the first and last fifth of
    the OPD steps of one arm-seed that logged them (the teacher arm)."""
    opd = [r for r in steps if r.get("phase") == "opd" and "overlap_ratio" in r]
    if not opd:
        return {}
    w = max(1, len(opd) // 5)
    first, last = opd[:w], opd[-w:]

    def mean(rows, key):
        return float(np.mean([r[key] for r in rows]))

    t = {"window_steps": w, "overlap_first": mean(first, "overlap_ratio"), "overlap_last": mean(last, "overlap_ratio"),
         "kl_first": mean(first, "topk_reverse_kl"), "kl_last": mean(last, "topk_reverse_kl")}
    saturated = min(t["overlap_first"], t["overlap_last"]) >= 1 - 1e-9  # k at the vocabulary: ratio 1 by construction
    t["overlap_rises"] = None if saturated else t["overlap_last"] > t["overlap_first"]
    t["kl_falls"] = t["kl_last"] < t["kl_first"]
    return t


# ------------------------------------------------------------------------------------------------- statistics
def final_scores(records: list[dict], which: str) -> np.ndarray | None:
    """(S, P) deciding scores of the last evaluation of each arm-seed on ``which`` ("target" / "retain")."""
    from .arms import primary

    rows = [primary(r["evals"][-1][which]) for r in records if r["evals"] and r["evals"][-1].get(which)]
    return np.asarray(rows, dtype=float) if rows and len(rows) == len(records) else None


def curves(baseline: dict, records: list[dict], which: str) -> list[dict]:
    """Mean deciding accuracy over seeds at each evaluation (step 0 = the untouched student), per-seed values and
    a t-interval over seeds (None with one seed)."""
    from .arms import primary

    if not baseline.get(which):
        return []
    out = [{"step": 0, "phase": "before", "mean": float(np.mean(primary(baseline[which]))), "per_seed": [],
            "low": None, "high": None}]
    for j, e in enumerate(records[0]["evals"] if records else []):
        vals = [float(np.mean(primary(r["evals"][j][which]))) for r in records
                if len(r["evals"]) > j and r["evals"][j].get(which)]
        if not vals:
            continue
        m, half = float(np.mean(vals)), None
        if len(vals) >= 2:
            half = ex.t_quantile_975(len(vals) - 1) * float(np.std(vals, ddof=1)) / np.sqrt(len(vals))
        out.append({"step": e["step"], "phase": e["phase"], "mean": m, "per_seed": vals,
                    "low": None if half is None else m - half, "high": None if half is None else m + half})
    return out


def summarise(cfg, baseline: dict, teacher: list[dict], control: list[dict],
              teacher_acc: dict | None) -> dict:
    """The experiment (pure): intervals of teacher − control, teacher − baseline, control − baseline and the
    retention change, the decision, gap recovery and the curves. ``cfg`` is the run's VerifyConfig (steps, seeds,
    min_gain, retain_tolerance, eval_samples, eval_temperature are read)."""
    from .arms import primary

    def interval(a, b):
        return None if a is None or b is None else ex.paired_seed_interval(a, b)

    T, C = final_scores(teacher, "target"), final_scores(control, "target") if control else None
    B = np.asarray(primary(baseline["target"]), dtype=float) if baseline.get("target") else None
    Tr = final_scores(teacher, "retain")
    Br = np.asarray(primary(baseline["retain"]), dtype=float) if baseline.get("retain") else None
    iv = {"teacher_vs_control": interval(T, C), "teacher_vs_baseline": interval(T, B),
          "control_vs_baseline": interval(C, B), "retention_teacher_vs_baseline": interval(Tr, Br),
          "retention_control_vs_baseline": interval(final_scores(control, "retain") if control else None, Br)}
    evidence = ex.Evidence(steps=cfg.steps, problems=0 if B is None else len(B), seeds=cfg.seeds)
    decision = ex.decide(iv["teacher_vs_control"], iv["teacher_vs_baseline"], iv["retention_teacher_vs_baseline"],
                         evidence, cfg.min_gain, cfg.retain_tolerance)
    gap = {}
    if teacher_acc is not None and B is not None:
        for arm, M in (("teacher", T), ("control", C)):
            if M is not None:
                gap[arm] = ex.gap_recovery(float(M.mean()), float(B.mean()), teacher_acc["accuracy"])
    metric = "avg@%d (T=%g)" % (cfg.eval_samples, cfg.eval_temperature) if cfg.eval_samples > 1 else "greedy pass@1"
    return {
        "metric": metric, "evidence": asdict(evidence), "min_steps": ex.MIN_STEPS, "min_problems": ex.MIN_PROBLEMS,
        "intervals": {k: (v.to_dict() if v is not None else None) for k, v in iv.items()},
        "decision": decision.to_dict(), "gap_recovery": gap,
        "accuracy": {"baseline": None if B is None else float(B.mean()),
                     "teacher": None if T is None else float(T.mean()),
                     "control": None if C is None else float(C.mean()),
                     "teacher_model": None if teacher_acc is None else teacher_acc["accuracy"]},
        "curves": {arm: {"target": curves(baseline, recs, "target"), "retain": curves(baseline, recs, "retain")}
                   for arm, recs in (("teacher", teacher), ("control", control)) if recs},
    }
