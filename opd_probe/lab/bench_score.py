"""The validation benchmark's predictions and its scorecard (docs/validation.md): pure reads of the probe and outcome
records that opd_probe.lab.bench wrote, plus the statistics of validation.py.

Predictors, each judged on the same pairs (cold-start pairs are a recommendation check, reported apart):

- the verdict (GO = predicts "works") and its continuous score (verdict.predicted_gain);
- always warn, always go;
- teacher accuracy (the teacher's hard held-out accuracy; as a rule, its threshold fitted on dev), and for the
  ranking "the most accurate teacher";
- one probe metric alone (step-0 top-k KL, overlap ratio, overlap mass): threshold and direction fitted on dev.
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .bench import outcome_path, pair_id, probe_path, sampled_pairs, split_pairs
from .bench_models import BENCH_DIR
from .validation import (auroc, balanced_accuracy, bootstrap_ci, check_rules_hash, current_rules_hash,
                         fit_threshold, spearman, top1_regret)

SINGLE = {"step-0 top-k KL": "topk_reverse_kl", "overlap ratio": "overlap_ratio",
          "overlap mass": "overlap_mass_student"}


def json_reader():
    """A reader that parses each JSON file once: predictions and scorecards look up a student's probe record and
    its family's manifest once per pair."""
    cache: dict[Path, dict] = {}

    def read(path: Path) -> dict:
        if path not in cache:
            cache[path] = json.loads(path.read_text())
        return cache[path]
    return read


def probe_row(p: dict, root: Path, read) -> dict:
    return read(probe_path(p["family"], p["student"], root))["pairs"][p["teacher"]]


def teacher_accuracy(p: dict, root: Path, read) -> float:
    return read(root / "models" / p["family"] / "manifest.json")["models"][p["teacher"]]["heldout_accuracy"]["hard"]


def score_of(row: dict) -> float:
    from ..verdict import predicted_gain

    return predicted_gain(row["metrics"], row["novelty"])


def predict(spec: dict, split: str, root: Path = BENCH_DIR, records: Path | None = None, write: bool = True) -> dict:
    """predictions-SPLIT.json: per pair the verdict, its reasons and the continuous score; per student the ranking;
    the probe settings and the rules hash they were made with. ``records``: where the probe records are (default
    ``root``); ``write=False`` returns the document only."""
    pairs, read = [], json_reader()
    for p in split_pairs(spec, split):
        row = probe_row(p, records or root, read)
        pairs.append({"pair": p, "verdict": row["verdict"], "reasons": row["reasons"], "score": score_of(row)})
    rankings: dict[str, list[str]] = {}
    for q in sorted((q for q in pairs if not q["pair"].get("cold_start")), key=lambda q: -q["score"]):
        rankings.setdefault(f"{q['pair']['family']}/{q['pair']['student']}", []).append(q["pair"]["teacher"])
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    doc = {"split": split, "rules_hash": current_rules_hash(), "made_at": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "code_commit": commit, "probe": spec["probe"], "pairs": pairs, "rankings": rankings}
    if not write:
        return doc
    out = root / f"predictions-{split}.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{len(pairs)} predictions -> {out} (rules {doc['rules_hash']}); commit it before measuring outcomes")
    return doc


def rows(spec: dict, split: str, root: Path = BENCH_DIR) -> list[dict]:
    """One row per scored pair: prediction (from the frozen predictions file), probe metrics, outcome."""
    pred = json.loads((root / f"predictions-{split}.json").read_text())
    check_rules_hash(pred, current_rules_hash())
    by_id = {(q["pair"]["family"], pair_id(q["pair"])): q for q in pred["pairs"]}
    out, read = [], json_reader()
    for p in split_pairs(spec, split):
        path = outcome_path(p, root)
        if not path.exists():
            continue
        o = json.loads(path.read_text())
        q = by_id[(p["family"], pair_id(p))]
        out.append({"pair": p, "id": f"{p['family']}/{pair_id(p)}", "verdict": q["verdict"], "reasons": q["reasons"],
                    "score": q["score"], "metrics": probe_row(p, root, read)["metrics"],
                    "teacher_acc": teacher_accuracy(p, root, read), "label": o["label"],
                    "gain": o["intervals"]["teacher_vs_baseline"], "vs_control": o["intervals"]["teacher_vs_control"],
                    "retention": o["intervals"]["retention_teacher_vs_baseline"], "gap_recovery": o["gap_recovery"],
                    "accuracy": o["accuracy"], "cold_start": o.get("cold_start")})
    return out


def sampled_rows(spec: dict, split: str, root: Path = BENCH_DIR) -> list[dict]:
    """The secondary labels (sampled-token loss) of the split, beside the split's frozen verdicts."""
    pred = json.loads((root / f"predictions-{split}.json").read_text())
    verdicts = {(q["pair"]["family"], pair_id(q["pair"])): q["verdict"] for q in pred["pairs"]}
    out = []
    for p in sampled_pairs(spec, split):
        path = outcome_path(p, root)
        if path.exists():
            o = json.loads(path.read_text())
            out.append({"id": f"{p['family']}/{pair_id(p)}", "verdict": verdicts[(p["family"], pair_id(p))],
                        "label": o["label"], "gain": o["intervals"]["teacher_vs_baseline"],
                        "retention": o["intervals"]["retention_teacher_vs_baseline"]})
    return out


def _clusters(rs: list[dict]) -> list[str]:
    return [f"{r['pair']['family']}/{r['pair']['student']}" for r in rs]


def rule_predictions(dev: list[dict], test: list[dict]) -> dict[str, dict]:
    """Each predictor's (binary prediction, continuous score) on ``test``; single-metric and teacher-accuracy
    thresholds fitted on ``dev`` (balanced accuracy), the direction too."""
    preds = {"verdict": ([r["verdict"] == "go" for r in test], [r["score"] for r in test]),
             "always warn": ([False] * len(test), None), "always go": ([True] * len(test), None)}
    dev_works = [r["label"] == "works" for r in dev]
    features = {"teacher accuracy": lambda r: r["teacher_acc"],
                **{name: (lambda r, m=m: r["metrics"][m]) for name, m in SINGLE.items()}}
    for name, f in features.items():
        try:
            t, higher = fit_threshold([f(r) for r in dev], dev_works)
        except ValueError:  # dev has one class only: no rule to fit
            continue
        s = np.array([f(r) for r in test], dtype=float)
        preds[name] = (list(s >= t if higher else s <= t), list(s if higher else -s))
    return preds


def measures(test: list[dict], preds: dict, n_boot: int = 2000) -> dict:
    """Balanced accuracy and AUROC of every predictor with bootstrap 95% intervals (whole students resampled)."""
    works = np.array([r["label"] == "works" for r in test])
    cl = _clusters(test)
    out = {}
    for name, (binary, score) in preds.items():
        b = np.array(binary, dtype=bool)
        m = {"balanced_accuracy": balanced_accuracy(b, works),
             "ba_ci": bootstrap_ci(lambda i: balanced_accuracy(b[i], works[i]), len(test), clusters=cl, n_boot=n_boot),
             "right": int((b == works).sum())}
        if score is not None:
            s = np.array(score, dtype=float)
            m["auroc"] = auroc(s, works)
            m["auroc_ci"] = bootstrap_ci(lambda i: auroc(s[i], works[i]), len(test), clusters=cl, n_boot=n_boot)
        out[name] = m
    return out


def ranking_measures(test: list[dict], key) -> dict:
    """Within-student Spearman of ``key`` vs realised gain (students with >= 4 candidates) and top-1 regret."""
    by: dict[str, list[dict]] = {}
    for r in test:
        by.setdefault(f"{r['pair']['family']}/{r['pair']['student']}", []).append(r)
    rhos, regrets = {}, {}
    for student, rs in by.items():
        gains = {r["pair"]["teacher"]: r["gain"]["mean"] for r in rs}
        ranked = [r["pair"]["teacher"] for r in sorted(rs, key=lambda r: -key(r))]
        regrets[student] = top1_regret(gains, ranked)
        if len(rs) >= 4:
            rhos[student] = spearman([key(r) for r in rs], [r["gain"]["mean"] for r in rs])
    finite = [v for v in rhos.values() if np.isfinite(v)]
    return {"spearman": rhos, "spearman_mean": float(np.mean(finite)) if finite else float("nan"),
            "regret": regrets, "regret_mean": float(np.mean(list(regrets.values()))) if regrets else float("nan")}


def _scored(rows: list[dict]) -> list[dict]:
    """The pairs a predictor is judged on: teacher choices (no cold start) with a clear label."""
    return [r for r in rows if not r["pair"].get("cold_start") and r["label"] != "unclear"]


def scorecard(dev: list[dict], test: list[dict]) -> dict:
    """The table of one split: counts, confusion matrix, every predictor's measures, the rankings."""
    main = _scored(test)
    preds = rule_predictions(_scored(dev), main)
    ranked = [r for r in test if not r["pair"].get("cold_start")]
    confusion = {v: {lab: sum(r["verdict"] == v and r["label"] == lab for r in main) for lab in ("works", "fails")}
                 for v in ("go", "caution", "no-go")}
    return {"pairs": len(test), "scored": len(main), "working": sum(r["label"] == "works" for r in main),
            "unclear": sum(r["label"] == "unclear" for r in ranked),
            "confusion": confusion, "predictors": measures(main, preds),
            "ranking": {"verdict score": ranking_measures(ranked, lambda r: r["score"]),
                        "teacher accuracy": ranking_measures(ranked, lambda r: r["teacher_acc"])}}


def score(spec: dict, root: Path = BENCH_DIR) -> dict:
    dev = rows(spec, "dev", root)
    report = {"dev": scorecard(dev, dev)}
    held = rows(spec, "heldout", root) if (root / "predictions-heldout.json").exists() else []
    if held:
        report["heldout"] = scorecard(dev, held)
    keep = ("id", "verdict", "reasons", "score", "teacher_acc", "label", "gain", "vs_control", "retention",
            "gap_recovery", "metrics")
    report["rows"] = {"dev": [{k: r[k] for k in keep} for r in dev], "heldout": [{k: r[k] for k in keep} for r in held]}
    report["sampled"] = {split: sampled_rows(spec, split, root) for split in ("dev", "heldout")
                         if (root / f"predictions-{split}.json").exists()}
    (root / "report.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    (root / "report.md").write_text(markdown(report))
    print(markdown(report))
    return report


def _f(x, d: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{d}f}"


def _ci(v, ci) -> str:
    return f"{_f(v)} [{_f(ci[0])}, {_f(ci[1])}]" if ci else _f(v)


def markdown(report: dict) -> str:
    """docs/validation.md's result tables from report.json: per split the predictors side by side, the confusion
    matrix, the ranking measures, then one row per pair."""
    out = []
    for split in ("heldout", "dev"):
        card = report.get(split)
        if not card:
            out.append(f"### {split}: not measured yet\n")
            continue
        out += [f"### {split} ({card['scored']} pairs scored, {card['working']} work; {card['unclear']} unclear left "
                f"out; {card['pairs']} measured in all)", "",
                "| predictor | right | balanced accuracy [95% CI] | AUROC [95% CI] |", "|---|---|---|---|"]
        for name, m in card["predictors"].items():
            out.append(f"| {name} | {m['right']}/{card['scored']} | {_ci(m['balanced_accuracy'], m['ba_ci'])} | "
                       f"{_ci(m['auroc'], m['auroc_ci']) if 'auroc' in m else '–'} |")
        out += ["", "| verdict | works | fails |", "|---|---|---|"]
        out += [f"| {v} | {c['works']} | {c['fails']} |" for v, c in card["confusion"].items()]
        out += ["", "| ranking by | within-student Spearman (per student) | mean | top-1 regret (per student) | mean |",
                "|---|---|---|---|---|"]
        for name, r in card["ranking"].items():
            rho = ", ".join(f"{k.split('/')[1]} {_f(v)}" for k, v in r["spearman"].items())
            reg = ", ".join(f"{k.split('/')[1]} {_f(v, 3)}" for k, v in r["regret"].items())
            out.append(f"| {name} | {rho} | {_f(r['spearman_mean'])} | {reg} | {_f(r['regret_mean'], 3)} |")
        out.append("")
    out += ["### Every pair", "", "| pair | verdict (reasons) | score | teacher acc | mass | ratio | top-k KL | "
            "gain [95% CI] | vs control | retention | label |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for split in ("dev", "heldout"):
        for r in report["rows"].get(split, []):
            m, g = r["metrics"], r["gain"]
            out.append(f"| {r['id']} ({split}) | {r['verdict']} ({', '.join(r['reasons']) or '–'}) | "
                       f"{_f(r['score'], 3)} | {_f(r['teacher_acc'])} | {_f(m['overlap_mass_student'])} | "
                       f"{_f(m['overlap_ratio'])} | {_f(m['topk_reverse_kl'], 3)} | {g['mean']:+.3f} "
                       f"[{g['low']:+.3f}, {g['high']:+.3f}] | {r['vs_control']['mean']:+.3f} | "
                       f"{r['retention']['mean']:+.3f} | {r['label']} |")
    sampled = [(split, r) for split, rs in report.get("sampled", {}).items() for r in rs]
    if sampled:
        out += ["", "### Secondary labels: the sampled-token loss (spec.json's subset; not in the tables above)", "",
                "| pair | verdict | gain [95% CI] | retention | label |", "|---|---|---|---|---|"]
        for split, r in sampled:
            g = r["gain"]
            out.append(f"| {r['id']} ({split}) | {r['verdict']} | {g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]"
                       f" | {r['retention']['mean']:+.3f} | {r['label']} |")
    return "\n".join(out) + "\n"
