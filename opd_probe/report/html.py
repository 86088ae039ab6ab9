"""`opd-probe report --html`: one self-contained HTML file rebuilt from out directories alone.

No model or tokenizer is loaded: numbers come from results.json / verify.json, per-state values from
states.parquet, token texts from tokens.json, top tokens from scores/<slug>/part-*.npz. The page is rendered by
jinja2 with autoescaping on (every prompt, path and generated string is escaped); plots are inline base64 PNGs
(plots.py); the token view's data is a JSON block read by a few lines of inline JavaScript. Nothing is fetched
from the network. Layout: docs/reports.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import __version__
from ..errors import InputError, OutputError
from ..types import ProbeResults
from .console import TEMPLATE_METRICS, short_names
from ..rundir import OutDir, atomic_write_text, load_results

TEMPLATES = Path(__file__).resolve().parent / "templates"
DEFAULT_MAX_ROLLOUTS = 5
TOP_TOKENS = 5  # tokens.json holds the texts of each model's top-5 ids per state
# (metric, header, decimals) of the ranking table
TABLE_METRICS = [
    ("overlap_ratio", "overlap ratio ↑", 3),
    ("overlap_mass_student", "mass (student) ↑", 3),
    ("overlap_mass_teacher", "mass (teacher) ↑", 3),
    ("entropy_gap", "entropy gap ↓", 3),
    ("topk_reverse_kl", "top-k rev. KL", 3),
    ("sampled_reverse_kl", "sampled rev. KL", 3),
    ("top1_agreement", "top-1 agree ↑", 3),
]
NO_RUN_FIX = ("pass the --out directory of a finished `opd-probe compare` (results.json) or `verify` (verify.json) run, "
              "or the --work directory of a `select-prompts` run (selection.json)")


# ------------------------------------------------------------------------------------------------ loading
@dataclass
class Run:
    """One out directory: a compare run (``results``) or a verify run (``verify``, the verify.json dict)."""

    path: Path
    kind: str  # "compare" | "verify" | "select"
    results: ProbeResults | None = None
    verify: dict | None = None
    label: str = ""
    selection: dict | None = None  # select-prompts: selection.json


def load_run(path: str | Path) -> Run:
    """Load a finished compare or verify out directory; InputError (exit 2, with a fix) when it is not one."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"no results.json, verify.json or selection.json: {p} does not exist", fix=NO_RUN_FIX)
    if not p.is_dir():
        raise InputError(f"{p} is not a directory", fix=NO_RUN_FIX)
    if (p / "results.json").exists():
        return Run(p, "compare", results=load_results(p))
    if (p / "verify.json").exists():
        f = p / "verify.json"
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
            if not isinstance(d, dict) or d.get("kind") != "verify" or not isinstance(d.get("steps"), list):
                raise ValueError("not a verify document")
            for key in ("config", "criteria", "outcome", "evals", "step0"):
                d[key]  # noqa: B018 - KeyError below names the missing key
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise InputError(f"{f} is not a valid opd-probe verify file: {e}",
                             fix="re-run `opd-probe verify`, or point at an intact verify.json") from e
        return Run(p, "verify", verify=d)
    if (p / "selection.json").exists():
        f = p / "selection.json"
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
            if not isinstance(d, dict) or d.get("kind") != "select":
                raise ValueError("not a selection document")
            for key in ("config", "pool", "selection", "summary"):
                d[key]  # noqa: B018 - KeyError below names the missing key
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise InputError(f"{f} is not a valid opd-probe selection file: {e}",
                             fix="re-run `opd-probe select-prompts ... --resume` to rewrite it") from e
        return Run(p, "select", selection=d)
    hint = (" (config.json is there: the run did not finish; continue it with --resume)"
            if (p / "config.json").exists() else "")
    raise InputError(f"no results.json, verify.json or selection.json in {p}{hint}", fix=NO_RUN_FIX)


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    runs = [load_run(p) for p in paths]
    labels = short_names([str(r.path) for r in runs])
    for r in runs:
        r.label = labels[str(r.path)]
    return runs


def _read_states(run: Run):
    f = run.path / "states.parquet"
    if not f.exists():
        return None
    import pandas as pd

    try:
        return pd.read_parquet(f)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise InputError(f"{f} cannot be read: {e}", fix="re-run the probe, or restore an intact states.parquet") from e


def _read_tokens(run: Run) -> dict[int, str] | None:
    f = run.path / "tokens.json"
    if not f.exists():
        return None
    try:
        return {int(k): str(v) for k, v in json.loads(f.read_text(encoding="utf-8")).items()}
    except (ValueError, AttributeError) as e:
        raise InputError(f"{f} is not a valid tokens file: {e}", fix="re-run the probe, or delete tokens.json "
                                                                      "(the report then shows token ids)") from e


def _prompt_texts(results: ProbeResults, run_dir: Path) -> tuple[dict[str, str], str | None]:
    """Prompt id -> text: from the run's own prompts.jsonl (written by compare), else from the prompt file when it
    is still at its recorded path with the same sha256."""
    own = run_dir / "prompts.jsonl"
    if own.is_file():
        from ..types import ProbePrompt

        try:
            prompts = [ProbePrompt.from_dict(json.loads(line)) for line in own.read_text().splitlines() if line]
            return {p.id: _prompt_text(p) for p in prompts}, None
        except (ValueError, KeyError) as e:
            return {}, f"{own} cannot be read ({e})"
    src, sha = results.prompts.get("source"), results.prompts.get("sha256")
    if not src or not sha:
        return {}, "the prompt file is not recorded in results.json"
    f = Path(src).expanduser()
    if not f.is_file():
        return {}, f"the prompt file {src} is not there any more"
    try:
        if hashlib.sha256(f.read_bytes()).hexdigest() != sha:
            return {}, f"the prompt file {src} changed since the run"
        from ..prompts import load_prompts

        prompts = load_prompts(f)
    except Exception as e:  # noqa: BLE001 - a report must not fail on a prompt file it only decorates with
        return {}, f"the prompt file {src} cannot be read ({e})"
    return {p.id: _prompt_text(p) for p in prompts}, None


def _prompt_text(p) -> str:
    return p.prompt if p.prompt is not None else "\n".join(f"{r}: {c}" for r, c in (p.messages or ()))


# ------------------------------------------------------------------------------------------------ helpers
def _num(x: Any) -> float | None:
    if x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def fmt(x: Any, d: int = 3) -> str:
    x = _num(x)
    return "–" if x is None else f"{x:.{d}f}"


def fmt_g(x: Any) -> str:
    x = _num(x)
    return "–" if x is None else f"{x:.3g}"


def _img(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


NICE_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)


def kl_scale(values) -> float:
    """Full-colour point of a teacher's token view: its states' 95th-percentile top-k KL, rounded up to a nice
    number, and at least 0.1 nats (so a teacher that agrees everywhere stays white, not shaded by noise)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    p95 = float(np.quantile(v, 0.95)) if len(v) else 0.0
    return next((x for x in NICE_SCALES if x >= p95), NICE_SCALES[-1])


def kl_shade(kl: float | None, scale: float) -> float:
    """A top-k reverse KL (nats) as a shade in [0, 1]: linear, full at ``scale``."""
    return 0.0 if kl is None or not math.isfinite(kl) else min(max(kl, 0.0) / scale, 1.0)


def _bg(kl: float | None, scale: float) -> str:
    if kl is None or not math.isfinite(kl):
        return "background:#e5e5e5"
    return f"background:rgba(215,48,39,{0.85 * kl_shade(kl, scale):.2f})"


def _display(text: str) -> str:
    """A token's text as shown inline: newlines get a visible mark, empty tokens a dot."""
    if text == "":
        return "·"
    return text.replace("\n", "↵\n")


# ------------------------------------------------------------------------------------------------ depth series
def _depth_from_results(pair, cfg_bucket: int, max_len: int) -> dict | None:
    rows = [b for b in pair.depth if b["n_states"] > 0]
    if len(rows) < 4:
        return None
    x = [(b["start"] + (b["end"] if b["end"] is not None else min(b["start"] + cfg_bucket, max_len))) / 2
         for b in rows]
    metrics = {}
    for m in ("overlap_ratio", "overlap_mass_student", "entropy_gap", "topk_reverse_kl"):
        metrics[m] = ([b["metrics"][m].mean for b in rows], [b["metrics"][m].ci_low for b in rows],
                      [b["metrics"][m].ci_high for b in rows])
    return {"x": x, "metrics": metrics}


def _depth_from_states(df, width: int, level: float, n_boot: int = 200, seed: int = 0) -> dict:
    """Token-pooled means per depth bin, with a percentile bootstrap over prompts (as metrics.aggregate does)."""
    pos = df["position"].to_numpy()
    b = pos // width
    nb = int(b.max()) + 1
    pid, prompts = np.unique(df["prompt_id"].astype(str).to_numpy(), return_inverse=True)
    n_p = len(pid)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n_p, np.full(n_p, 1.0 / n_p), size=n_boot).astype(float)  # (R, P)
    counts = np.zeros((nb, n_p))
    np.add.at(counts, (b, prompts), 1.0)
    out = {}
    for m in ("overlap_ratio", "overlap_mass_student", "entropy_gap", "topk_reverse_kl"):
        v = df[m].to_numpy(dtype=float)
        ok = np.isfinite(v)
        sums = np.zeros((nb, n_p))
        cnt = np.zeros((nb, n_p))
        np.add.at(sums, (b[ok], prompts[ok]), v[ok])
        np.add.at(cnt, (b[ok], prompts[ok]), 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sums.sum(1) / cnt.sum(1)
            reps = (weights @ sums.T) / (weights @ cnt.T)  # (R, B)
        alpha = (1 - level) / 2
        low = np.nanquantile(np.where(np.isfinite(reps), reps, np.nan), alpha, axis=0) if n_boot else mean
        high = np.nanquantile(np.where(np.isfinite(reps), reps, np.nan), 1 - alpha, axis=0) if n_boot else mean
        out[m] = (mean.tolist(), low.tolist(), high.tolist())
    keep = counts.sum(1) > 0
    x = ((np.arange(nb) + 0.5) * width)[keep]
    return {"x": x.tolist(), "metrics": {m: tuple(list(np.asarray(a)[keep]) for a in v) for m, v in out.items()}}


# ------------------------------------------------------------------------------------------------ token view
class _Scores:
    """Top-k ids / log-probs and the sampled token's log-prob per (slug, rollout), read part by part on demand."""

    def __init__(self, out: OutDir, lengths: dict[int, int]):
        self.out = out
        self.lengths = lengths  # rollout id -> number of states
        self.order = sorted(lengths)
        self.cache: dict[tuple[str, int], dict[str, np.ndarray] | None] = {}

    def get(self, slug: str, rid: int) -> dict[str, np.ndarray] | None:
        key = (slug, rid)
        if key not in self.cache:
            self._load(slug, rid)
        return self.cache.get(key)

    def _load(self, slug: str, rid: int) -> None:
        self.cache[(slug, rid)] = None
        d = self.out.scores_dir(slug)
        if not d.is_dir():
            return
        for f in sorted(d.glob("part-*.npz")):
            try:
                _, a, b = f.stem.split("-")
                first, last = int(a), int(b)
            except ValueError:
                continue
            if not first <= rid <= last:
                continue
            ids = [r for r in self.order if first <= r <= last]
            try:
                with np.load(f) as z:
                    arrays = {k: z[k] for k in ("topk_ids_LK", "topk_logprobs_LK", "sampled_logprob_L") if k in z}
            except Exception:  # noqa: BLE001 - a damaged part only costs the tooltips of its rollouts
                return
            total = sum(self.lengths[r] for r in ids)
            if "topk_ids_LK" not in arrays or arrays["topk_ids_LK"].shape[0] != total:
                return
            start = 0
            for r in ids:
                n = self.lengths[r]
                self.cache[(slug, r)] = {k: v[start:start + n] for k, v in arrays.items()}
                start += n
            return


def _token_views(run: Run, results: ProbeResults, states, tokens: dict[int, str] | None, names: dict[str, str],
                 prompt_texts: dict[str, str], max_rollouts: int, run_key: str) -> tuple[dict, dict]:
    """Per teacher: the worst rollouts (highest mean top-k KL) with per-token data; and the JSON for tooltips."""
    views: dict[str, dict] = {}  # teacher -> {"rollouts": [...], "total": n, "left_out": m}
    data: dict[str, Any] = {"views": {}, "text": {}}
    if states is None or max_rollouts <= 0:
        return views, data
    out = OutDir(run.path)
    first_teacher = states[states["teacher"] == results.pairs[0].teacher] if results.pairs else states.iloc[:0]
    lengths = {int(k): int(v) for k, v in first_teacher.groupby("rollout_id").size().items()}
    scores = _Scores(out, lengths)
    used_ids: set[int] = set()
    for ti, pair in enumerate(results.pairs):
        df = states[states["teacher"] == pair.teacher]
        if df.empty:
            continue
        per_rollout = df.groupby("rollout_id")["topk_reverse_kl"].mean().sort_values(ascending=False, kind="stable")
        scale = kl_scale(df["topk_reverse_kl"].to_numpy())
        chosen = [int(r) for r in per_rollout.index[:max_rollouts]]
        rollouts = []
        for rid in chosen:
            rows = df[df["rollout_id"] == rid].sort_values("position")
            s = scores.get("student", rid)
            t = scores.get(pair.slug, rid)
            if s is not None and len(s["topk_ids_LK"]) != len(rows):
                s = None
            if t is not None and len(t["topk_ids_LK"]) != len(rows):
                t = None
            view_id = f"{run_key}-t{ti}-r{rid}"
            tok_ids = [int(x) for x in rows["token_id"]]
            kl = [_num(x) for x in rows["topk_reverse_kl"]]
            ov = [_num(x) for x in rows["overlap_ratio"]]
            entry: dict[str, Any] = {"tok": tok_ids, "kl": [None if x is None else round(x, 4) for x in kl],
                                     "ov": [None if x is None else round(x, 3) for x in ov],
                                     "pos": [int(x) for x in rows["position"]]}
            used_ids.update(tok_ids)
            for key, arr in (("s", s), ("t", t)):
                if arr is None:
                    continue
                ids = arr["topk_ids_LK"][:, :TOP_TOKENS].astype(int)
                probs = np.exp(arr["topk_logprobs_LK"][:, :TOP_TOKENS].astype(float))
                entry[key] = ids.tolist()
                entry[key + "p"] = np.round(probs, 4).tolist()
                if "sampled_logprob_L" in arr:
                    entry[key + "x"] = [round(float(v), 4) if math.isfinite(v) else None
                                        for v in np.exp(arr["sampled_logprob_L"].astype(float))]
                used_ids.update(int(i) for i in np.unique(ids))
            data["views"][view_id] = entry
            prompt_id = str(rows["prompt_id"].iloc[0])
            rollouts.append({
                "id": view_id, "rollout_id": rid, "prompt_id": prompt_id, "prompt": prompt_texts.get(prompt_id),
                "mean_kl": float(per_rollout.loc[rid]), "mean_overlap": float(np.nanmean(rows["overlap_ratio"])),
                "n": len(rows), "has_scores": s is not None and t is not None,
                "tokens": [{"text": _display(tokens[i]) if tokens is not None and i in tokens else f"⟨{i}⟩",
                            "style": _bg(k, scale)} for i, k in zip(tok_ids, kl)],
            })
        views[pair.teacher] = {"rollouts": rollouts, "total": len(per_rollout),
                               "left_out": len(per_rollout) - len(rollouts), "name": names[pair.teacher],
                               "index": ti, "scale": scale, "ticks": [
                                   {"label": f"{scale * f:g}", "left": 100 * f} for f in (0, 0.25, 0.5, 0.75, 1)]}
    if tokens is not None:
        data["text"] = {str(i): tokens[i] for i in sorted(used_ids) if i in tokens}
    return views, data


# ------------------------------------------------------------------------------------------------ sections
def _compare_section(run: Run, idx: int, max_rollouts: int) -> dict:
    from . import plots

    r = run.results
    key = f"run{idx}"
    names = short_names(list(r.ranking) or [p.teacher for p in r.pairs])
    for p in r.pairs:
        names.setdefault(p.teacher, p.teacher)
    by = {p.teacher: p for p in r.pairs}
    states = _read_states(run)
    tokens = _read_tokens(run)
    prompt_texts, prompt_note = _prompt_texts(r, run.path)
    notes = []
    if states is None:
        notes.append("states.parquet is missing: no per-state distribution, depth detail or token view.")
    if tokens is None:
        notes.append("tokens.json is missing (a run made before reports could show token texts): the token view "
                     "shows token ids.")
    if prompt_note:
        notes.append(f"Prompt texts are not shown: {prompt_note}.")
    k = int(r.config.get("top_k", 16))
    views, data = _token_views(run, r, states, tokens, names, prompt_texts, max_rollouts, key)

    # ranking table
    rows = []
    for rank, name in enumerate(r.ranking, 1):
        p = by[name]
        cells = []
        for metric, _, d in TABLE_METRICS:
            e = p.pooled.get(metric)
            approx = p.approximate.get(metric)
            cells.append({"mean": fmt(e.mean if e else None, d),
                          "ci": f"{fmt(e.ci_low, d - 1)}–{fmt(e.ci_high, d - 1)}" if e else "",
                          "approx": (f"exact at {approx['exact_fraction']:.0%} of states; {approx['how']}"
                                     if approx else None)})
        cont = p.novelty.continuation or ()
        v = views.get(name, {})
        rows.append({
            "rank": rank, "name": names[name], "full": name, "status": p.verdict.status,
            "cells": cells, "card": f"{key}-card-{r.pairs.index(p)}",
            "gain": ", ".join(f"{c.gain:+.2f}@{c.depth}" for c in cont if _num(c.gain) is not None) or "–",
            "grad_norm": fmt_g(p.novelty.grad_norm),
            "worst": [{"href": ro["id"], "label": f"#{ro['rollout_id']}", "kl": fmt(ro["mean_kl"], 2)}
                      for ro in v.get("rollouts", [])],
        })

    # verdict cards
    cards = []
    for name in r.ranking:
        p = by[name]
        v = p.verdict
        e = p.pooled
        cards.append({
            "id": f"{key}-card-{r.pairs.index(p)}", "name": names[name], "full": name, "slug": p.slug,
            "status": v.status,
            "summary": [("overlap ratio", f"{fmt(e['overlap_ratio'].mean, 2)} [{fmt(e['overlap_ratio'].ci_low, 2)}, "
                                          f"{fmt(e['overlap_ratio'].ci_high, 2)}]"),
                        ("mass (student)", fmt(e["overlap_mass_student"].mean, 3)),
                        ("entropy gap", ("≈" if "entropy_gap" in p.approximate else "") + fmt(e["entropy_gap"].mean, 3)),
                        ("top-k KL", ("≈" if "topk_reverse_kl" in p.approximate else "")
                         + f"{fmt(e['topk_reverse_kl'].mean, 3)} nats/token")],
            "reasons": [{"code": x.code, "severity": x.severity, "metric": x.metric, "value": fmt(x.value),
                         "threshold": fmt(x.threshold), "direction": x.direction, "message": x.message,
                         "numeric": x.value is not None} for x in v.reasons],
            "recommendations": list(v.recommendations),
            "warnings": list(p.warnings),
            "model": {key_: p.model.get(key_) for key_ in ("architecture", "num_parameters", "dtype", "device")
                      if p.model.get(key_) is not None},
        })

    # prompts that hurt: highest per-prompt top-k KL per teacher
    hurt = []
    for name in r.ranking:
        p = by[name]
        items = [(pid, m) for pid, m in p.per_prompt.items() if _num(m.get("topk_reverse_kl")) is not None]
        items.sort(key=lambda t: -t[1]["topk_reverse_kl"])
        hurt.append({"name": names[name], "rows": [
            {"id": pid, "kl": fmt(m.get("topk_reverse_kl")), "overlap": fmt(m.get("overlap_ratio")),
             "n": m.get("n_states", "–"), "prompt": prompt_texts.get(pid)} for pid, m in items[:5]],
            "total": len(items)})

    # plots
    figs = []
    order = [by[n] for n in r.ranking]
    if states is not None:
        figs.append({"id": f"{key}-fig-overlap", "title": "Per-state overlap ratio",
                     "caption": f"Distribution over every student state of |top-{k}(student) ∩ top-{k}(teacher)| / {k}. "
                                "Mass near 1 = the teacher ranks the student's candidate tokens high; mass near 0 = "
                                "a different thinking pattern.",
                     "src": _img(plots.overlap_distribution(
                         [(names[p.teacher], states.loc[states["teacher"] == p.teacher, "overlap_ratio"].to_numpy())
                          for p in order], k))})
    series, depth_note = [], None
    max_len = int(r.rollouts.get("response_length_max") or 1)
    bucket = int(r.config.get("depth_bucket", 256))
    for p in order:
        s = _depth_from_results(p, bucket, max_len)
        if s is None and states is not None:
            df = states[states["teacher"] == p.teacher]
            width = max(1, int(math.ceil(max_len / 12)))
            s = _depth_from_states(df, width, float(r.config.get("ci_level", 0.95)), seed=int(r.config.get("seed", 0)))
            depth_note = (f"results.json has fewer than 4 depth buckets of {bucket} tokens, so these bins of {width} "
                          "tokens are computed from states.parquet (token-pooled means; 200-replicate bootstrap "
                          "over prompts).")
        elif s is None:
            rows_ = [b for b in p.depth if b["n_states"] > 0]
            s = {"x": [(b["start"] + (b["end"] or min(b["start"] + bucket, max_len))) / 2 for b in rows_],
                 "metrics": {m: ([b["metrics"][m].mean for b in rows_], [b["metrics"][m].ci_low for b in rows_],
                                 [b["metrics"][m].ci_high for b in rows_])
                             for m in ("overlap_ratio", "overlap_mass_student", "entropy_gap", "topk_reverse_kl")}}
        if s and s["x"]:
            series.append({"name": names[p.teacher], **s})
    if series:
        figs.append({"id": f"{key}-fig-depth", "title": "Metrics against response depth",
                     "caption": ("Mean per depth bin (tokens into the response), with the "
                                 f"{int(float(r.config.get('ci_level', 0.95)) * 100)}% bootstrap CI over prompts as a "
                                 "band. Overlap that falls with depth means the teacher's signal decays on long "
                                 "responses (horizon-decay). " + (depth_note or f"Buckets of {bucket} tokens from "
                                                                   "results.json.")),
                     "src": _img(plots.depth_curves(series, "response depth (tokens)"))})
    scatter = [(names[p.teacher], [m.get("overlap_ratio") for m in p.per_prompt.values()],
                [m.get("topk_reverse_kl") for m in p.per_prompt.values()]) for p in order]
    if any(len(x) for _, x, _ in scatter):
        figs.append({"id": f"{key}-fig-prompts", "title": "Per prompt: overlap against top-k KL",
                     "caption": "One point per prompt and teacher (means over the prompt's states). Points high and to "
                                "the left are the prompts where the teacher disagrees most with the student; the table "
                                "below lists them.",
                     "src": _img(plots.per_prompt_scatter(scatter))})
    dist = r.distinguishability
    if dist and dist.get("teachers"):
        figs.append({"id": f"{key}-fig-dist", "title": "Teacher against teacher",
                     "caption": "At the same student states: how much two teachers' top-k sets overlap, and the "
                                "symmetric KL of their distributions on the student's top-k. Teachers that overlap "
                                f"≥ {fmt(r.thresholds.get('indistinguishable_overlap'), 2)} with KL ≤ "
                                f"{fmt(r.thresholds.get('indistinguishable_kl'), 2)} give the student the same signal: "
                                "prefer the cheapest.",
                     "src": _img(plots.distinguishability([names.get(t, t) for t in dist["teachers"]],
                                                          dist["overlap"], dist["kl"]))})

    from .console import plan_rows, plan_title, template_summary

    template_blocks = []
    for p in order:
        if p.templates:
            template_blocks.append({"name": names[p.teacher], "full": p.teacher, **template_summary(p.templates),
                                    "headers": [label for _, label, _ in TEMPLATE_METRICS]})
    plan = None
    if r.plan:
        plan = {"title": plan_title(r.plan), "rows": plan_rows(r.plan), "assumptions": list(r.plan.assumptions)}

    env = r.environment
    ro = r.rollouts
    token_views = [views[n] for n in r.ranking if n in views]
    for v in token_views:
        v["anchor"] = f"{key}-tok-{v['index']}"
    return {
        "kind": "compare", "key": key, "label": run.label, "path": str(run.path),
        "student": r.student.get("path", "?"), "student_info": {k_: r.student.get(k_) for k_ in (
            "architecture", "num_parameters", "dtype", "device", "vocab_size") if r.student.get(k_) is not None},
        "teachers": [names[p.teacher] for p in r.pairs], "teachers_full": [p.teacher for p in r.pairs],
        "prompt_source": r.prompts.get("source") or "–", "prompt_sha": (r.prompts.get("sha256") or "")[:12],
        "reused_from": r.prompts.get("reused_from"),
        "n_prompts": ro.get("prompts"), "samples": ro.get("samples_per_prompt"), "states": ro.get("states"),
        "k": k, "created_at": r.created_at, "tool_version": r.tool_version,
        "length_mean": fmt(ro.get("response_length_mean"), 1), "length_max": ro.get("response_length_max"),
        "finish": ", ".join(f"{n} {k_}" for k_, n in (ro.get("finish_reasons") or {}).items()),
        "student_accuracy": fmt(ro.get("student_accuracy"), 3) if ro.get("student_accuracy") is not None else None,
        "versions": ", ".join(f"{k_} {env[k_]}" for k_ in ("python", "torch", "transformers", "numpy", "pandas")
                              if env.get(k_)),
        "device": env.get("cuda_device") or ("CUDA" if env.get("cuda_available") else "CPU"),
        "headers": [h for _, h, _ in TABLE_METRICS], "ci_level": int(float(r.config.get("ci_level", 0.95)) * 100),
        "rows": rows, "cards": cards, "gate": r.gate, "warnings": list(r.warnings), "hurt": hurt, "figs": figs,
        "token_views": token_views, "data": data, "notes": notes, "max_rollouts": max_rollouts,
        "thresholds": r.thresholds, "templates": template_blocks, "plan": plan,
    }


def _selection_section(run: Run, idx: int) -> dict:
    from . import plots
    from .console import SELECTION_COLUMNS, selection_deltas, selection_headline

    d = run.selection
    cfg, sel = d["config"], d["selection"]
    key = f"run{idx}"
    labels = {"pool": "pool (scored)", "kept": "kept", "aligned": "aligned", "ood": "out-of-distribution"}
    rows = [{"label": label, "prompts": d["summary"][k]["prompts"],
             "cells": [fmt(d["summary"][k].get(m), dd) for m, _, dd in SELECTION_COLUMNS]}
            for k, label in labels.items()]
    figs, notes = [], []
    scores_file = run.path / "scores.jsonl"
    if scores_file.is_file():
        from ..run.select import read_scores

        metric = sel["rank_metric"]
        scores = read_scores(scores_file)
        kept = {}
        out = Path(sel.get("out") or "")
        if out.is_file():
            try:
                for line in out.read_text(encoding="utf-8").splitlines():
                    rec = json.loads(line).get("opd_probe") or {}
                    kept[int(rec["line"])] = rec["group"]
            except (ValueError, KeyError, TypeError, AttributeError):
                kept = {}
        if kept:
            by_group = {g: [s.get(metric) for s in scores.values() if kept.get(s.get("line")) == g]
                        for g in ("aligned", "ood")}
            figs.append({"id": f"{key}-fig-select", "title": "Per-prompt alignment: pool and kept prompts",
                         "caption": f"Each pool prompt's mean {metric} over its own states. The kept prompts are "
                                    f"the aligned top ({'right' if sel.get('higher_is_aligned', True) else 'left'} "
                                    "of the dashed cut-off) plus the out-of-distribution draw from the rest.",
                         "src": _img(plots.selection_distribution(
                             [s.get(metric) for s in scores.values()], by_group["aligned"], by_group["ood"],
                             metric, sel.get("aligned_cutoff")))})
        else:
            notes.append(f"the kept file {out} is not there (or not readable): no per-prompt plot.")
    else:
        notes.append("scores.jsonl is missing: no per-prompt plot.")
    env = d.get("environment") or {}
    return {
        "kind": "select", "key": key, "label": run.label, "path": str(run.path),
        "student": cfg.get("student"), "teacher": cfg.get("teacher"), "pool": d["pool"].get("source"),
        "pool_sha": (d["pool"].get("sha256") or "")[:12], "out": sel.get("out"),
        "n_pool": d["pool"].get("count"), "scored": d["pool"].get("scored"), "skipped": d["pool"].get("skipped"),
        "samples": cfg.get("probe_samples"), "k": cfg.get("top_k"), "max_new_tokens": cfg.get("max_new_tokens"),
        "headline": selection_headline(d), "deltas": selection_deltas(d),
        "headers": [h.replace("\n", " ") for _, h, _ in SELECTION_COLUMNS], "rows": rows, "figs": figs,
        "notes": notes, "warnings": list(d.get("warnings", [])), "created_at": d.get("created_at", ""),
        "tool_version": d.get("tool_version", "?"),
        "versions": ", ".join(f"{k_} {env[k_]}" for k_ in ("python", "torch", "transformers", "numpy", "pandas")
                              if env.get(k_)),
    }


def _verify_section(run: Run, idx: int) -> dict:
    from . import plots

    v = run.verify
    cfg, c = v["config"], v["criteria"]
    key = f"run{idx}"
    crit = [
        {"name": "overlap ratio rises", "first": fmt(c.get("overlap_first")), "last": fmt(c.get("overlap_last")),
         "result": _criterion(c.get("overlap_rises")), "label": None},
        {"name": "top-k reverse KL falls", "first": fmt(c.get("kl_first")), "last": fmt(c.get("kl_last")),
         "result": "pass" if c.get("kl_falls") else "fail", "label": None},
    ]
    if "accuracy" in c:
        crit.append({"name": f"held-out accuracy (noise ±{fmt(c.get('accuracy_noise'))})",
                     "first": fmt(c.get("accuracy_start")), "last": fmt(c.get("accuracy_end")),
                     "result": {"improves": "pass", "flat": "flat", "drops": "fail"}.get(c["accuracy"], c["accuracy"]),
                     "label": c["accuracy"]})
    figs = []
    if v["steps"]:
        figs.append({"id": f"{key}-fig-steps", "title": "Per-step metrics",
                     "caption": "Probe metrics on each OPD step's own batch (before its update) and the gradient norm. "
                                "Success needs overlap to rise and KL to fall "
                                f"(first vs last {c.get('window_steps', '?')} step(s)).",
                     "src": _img(plots.verify_curves(v["steps"]))})
    if v["evals"]:
        figs.append({"id": f"{key}-fig-acc", "title": "Held-out accuracy",
                     "caption": "Accuracy on the --eval-prompts (± 1 standard error), with the teacher's for reference.",
                     "src": _img(plots.verify_accuracy(v["evals"], v.get("teacher_accuracy")))})
    s0 = v.get("step0") or {}
    env = v.get("environment") or {}
    ta = v.get("teacher_accuracy")
    return {
        "kind": "verify", "key": key, "label": run.label, "path": str(run.path),
        "student": cfg.get("student"), "teacher": cfg.get("teacher"), "steps": cfg.get("steps"),
        "loss": cfg.get("loss"), "lr": cfg.get("lr"), "cold_start": cfg.get("cold_start"),
        "prompts": cfg.get("prompts"), "eval_prompts": cfg.get("eval_prompts"),
        "batch": f"{cfg.get('batch_prompts')} prompts × {cfg.get('samples')} samples, k={cfg.get('top_k')}",
        "created_at": v.get("created_at", ""), "tool_version": v.get("tool_version", "?"),
        "versions": ", ".join(f"{k_} {env[k_]}" for k_ in ("python", "torch", "transformers", "numpy", "pandas")
                              if env.get(k_)),
        "criteria": crit, "passed": bool(c.get("passed")), "outcome": v.get("outcome"),
        "step0": [(m, fmt(s0.get(m)) if m != "grad_norm" else fmt_g(s0.get(m))) for m in (
            "overlap_ratio", "overlap_mass_student", "entropy_gap", "topk_reverse_kl", "grad_norm") if m in s0],
        "teacher_accuracy": fmt(ta.get("accuracy")) if ta else None,
        "gap_recovery": fmt(v.get("gap_recovery"), 2) if v.get("gap_recovery") is not None else None,
        "figs": figs,
    }


# ------------------------------------------------------------------------------------------------ rendering
def _versions() -> str:
    parts = [f"opd-probe {__version__}"]
    for mod in ("matplotlib", "jinja2", "numpy", "pandas"):
        try:
            parts.append(f"{mod} {__import__(mod).__version__}")
        except Exception:  # noqa: BLE001
            pass
    return ", ".join(parts)


def _environment():
    try:
        import jinja2
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise InputError("the HTML report needs jinja2", fix="pip install 'jinja2>=3.1'") from e
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    return env


def render_html(runs: Sequence[Run], max_rollouts: int = DEFAULT_MAX_ROLLOUTS) -> str:
    """The whole report as one HTML string (every string autoescaped; plots inline)."""
    if max_rollouts < 0:
        raise InputError(f"--max-rollouts must be >= 0 (got {max_rollouts})", fix="e.g. --max-rollouts 5; 0 = no "
                                                                                    "token view")
    sections = [(_compare_section(r, i, max_rollouts) if r.kind == "compare" else
                 _selection_section(r, i) if r.kind == "select" else _verify_section(r, i))
                for i, r in enumerate(runs)]
    overview = []
    for s in sections:
        if s["kind"] == "compare":
            overview.append({"label": s["label"], "key": s["key"], "kind": "compare", "what": s["student"],
                             "entries": [(row["name"], row["status"]) for row in s["rows"]]})
        elif s["kind"] == "select":
            overview.append({"label": s["label"], "key": s["key"], "kind": "select-prompts",
                             "what": f"{s['student']} ← {s['teacher']}", "entries": [(s["headline"], "other")]})
        else:
            overview.append({"label": s["label"], "key": s["key"], "kind": "verify",
                             "what": f"{s['student']} ← {s['teacher']}",
                             "entries": [(s["outcome"], "go" if s["passed"] else "no-go")]})
    template = _environment().get_template("report.html.j2")
    return template.render(
        sections=sections, overview=overview, generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=_versions(),
    )


def _criterion(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "fail")


def write_html(runs: Sequence[str | Path | Run], out_file: str | Path, max_rollouts: int = DEFAULT_MAX_ROLLOUTS) -> int:
    """Render out directories (paths, or runs from load_runs) into one file, written atomically; returns its size
    in bytes."""
    loaded = list(runs) if all(isinstance(r, Run) for r in runs) else load_runs(runs)
    html = render_html(loaded, max_rollouts=max_rollouts)
    f = Path(out_file).expanduser()
    try:
        atomic_write_text(f, html)
    except OSError as e:
        raise OutputError(f"--html {f}: {e.strerror or e}", fix="pass a writable file path") from e
    return len(html.encode("utf-8"))


# ------------------------------------------------------------------------------------------------ markdown
def verify_markdown(run: Run) -> str:
    v = run.verify
    c, cfg = v["criteria"], v["config"]
    lines = [f"## opd-probe verify: `{_md(cfg.get('student'))}` ← `{_md(cfg.get('teacher'))}`", "",
             f"{cfg.get('steps')} OPD steps, loss={cfg.get('loss')} · outcome **{_md(v.get('outcome'))}** · "
             f"success criteria **{'PASSED' if c.get('passed') else 'FAILED'}**", "",
             "| criterion | first steps | last steps | result |", "|---|---|---|---|",
             f"| overlap ratio rises | {fmt(c.get('overlap_first'))} | {fmt(c.get('overlap_last'))} | "
             f"{_criterion(c.get('overlap_rises'))} |",
             f"| top-k reverse KL falls | {fmt(c.get('kl_first'))} | {fmt(c.get('kl_last'))} | "
             f"{'pass' if c.get('kl_falls') else 'fail'} |"]
    if "accuracy" in c:
        lines.append(f"| held-out accuracy | {fmt(c.get('accuracy_start'))} | {fmt(c.get('accuracy_end'))} | "
                     f"{_md(c['accuracy'])} |")
    lines.append("")
    return "\n".join(lines)


def _md(text: Any) -> str:
    from .markdown import _md as md

    return md(str(text))


def report_markdown(runs: Sequence[Run]) -> str:
    """summary_markdown for each compare run, a short summary for each verify run; labelled when several."""
    from .markdown import summary_markdown

    parts = []
    from .markdown import selection_markdown

    for r in runs:
        body = (summary_markdown(r.results) if r.kind == "compare" else
                selection_markdown(r.selection) if r.kind == "select" else verify_markdown(r))
        if len(runs) > 1:
            body = f"**Run `{_md(r.label)}`**\n\n" + body
        parts.append(body)
    return "\n".join(parts)
