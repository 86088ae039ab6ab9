"""`opd-probe report --html`: one self-contained HTML file rebuilt from out directories alone.

No model or tokenizer is loaded: runs are read by runs.py (results.json / verify.json / selection.json,
states.parquet, tokens.json), the token view by tokenview.py (top tokens from scores/<slug>/part-*.npz). This
module builds each run's section and renders the page with jinja2, autoescaping on (every prompt, path and
generated string is escaped); plots are inline base64 PNGs (plots.py); the token view's data is a JSON block read
by a few lines of inline JavaScript. Nothing is fetched from the network. Layout: docs/reports.md.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import __version__, metrics
from ..errors import InputError, OutputError
from ..rundir import atomic_write_text, read_pool_scores
from ..types import ProbeResults
from . import plots
from .runs import Run, load_runs, prompt_texts, read_states, read_tokens
from .tokenview import token_views
from .verifyview import ARM_HEADERS, COLD_START_HEADERS, COMPARISON_HEADERS, LEGACY_HEADERS, curve_panels, verify_view
from .view import (DEPTH_METRICS, HTML_RANKING, SELECTION_COLUMNS, SELECTION_SETS, TEMPLATE_METRICS, ci_range, fmt,
                   gains, num, plan_rows, plan_title, selection_cells, selection_deltas, selection_headline,
                   short_names, template_summary)

TEMPLATES = Path(__file__).resolve().parent / "templates"
DEFAULT_MAX_ROLLOUTS = 5
MIN_DEPTH_BUCKETS = 4  # fewer results.json depth buckets: finer bins from states.parquet (docs/reports.md)
DEPTH_BOOTSTRAP = 200  # replicates of the finer bins' bootstrap (a plot band, not a gate: kept cheap)
LIBRARIES = ("python", "torch", "transformers", "numpy", "pandas")


def _img(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _ranked(r: ProbeResults) -> list:
    """The pairs, best first (results.ranking)."""
    by = {p.teacher: p for p in r.pairs}
    return [by[n] for n in r.ranking]


def _library_versions(env: dict) -> str:
    return ", ".join(f"{k_} {env[k_]}" for k_ in LIBRARIES if env.get(k_))


# ------------------------------------------------------------------------------------------------ depth series
def _depth_buckets(pair, bucket: int, max_len: int) -> dict:
    """results.json's depth buckets that hold states: centres and (mean, low, high) per metric."""
    rows = [b for b in pair.depth if b["n_states"] > 0]
    x = [(b["start"] + (b["end"] if b["end"] is not None else min(b["start"] + bucket, max_len))) / 2 for b in rows]
    return {"x": x, "metrics": {m: ([b["metrics"][m].mean for b in rows], [b["metrics"][m].ci_low for b in rows],
                                    [b["metrics"][m].ci_high for b in rows]) for m in DEPTH_METRICS}}


def _depth_from_states(df, width: int, level: float, n_boot: int = DEPTH_BOOTSTRAP, seed: int = 0) -> dict:
    """Token-pooled means per depth bin of ``width`` tokens, with the percentile bootstrap over prompts of
    metrics.aggregate (metrics.bootstrap_weights / group_sums / pooled_estimate)."""
    bin_N = df["position"].to_numpy() // width
    pid, prompt_N = np.unique(df["prompt_id"].astype(str).to_numpy(), return_inverse=True)
    weights = metrics.bootstrap_weights(len(pid), n_boot, seed)
    bins = [b for b in range(int(bin_N.max()) + 1) if (bin_N == b).any()]
    out = {}
    for m in DEPTH_METRICS:
        v = df[m].to_numpy(dtype=float)
        est = [metrics.pooled_estimate(*metrics.group_sums(v[bin_N == b], prompt_N[bin_N == b], len(pid)), weights,
                                       level) for b in bins]
        out[m] = ([e.mean for e in est], [e.ci_low for e in est], [e.ci_high for e in est])
    return {"x": [(b + 0.5) * width for b in bins], "metrics": out}


def _depth_figure(r: ProbeResults, names: dict[str, str], states, key: str) -> dict | None:
    """Metrics against response depth: results.json's buckets, or finer bins from states.parquet when there are
    fewer than MIN_DEPTH_BUCKETS of them."""
    series, note = [], None
    max_len = int(r.rollouts.get("response_length_max") or 1)
    bucket = int(r.config.get("depth_bucket", 256))
    ci_level = float(r.config.get("ci_level", 0.95))
    for p in _ranked(r):
        s = _depth_buckets(p, bucket, max_len)
        if len(s["x"]) < MIN_DEPTH_BUCKETS and states is not None:
            width = max(1, int(math.ceil(max_len / 12)))
            s = _depth_from_states(states[states["teacher"] == p.teacher], width, ci_level,
                                   seed=int(r.config.get("seed", 0)))
            note = (f"results.json has fewer than {MIN_DEPTH_BUCKETS} depth buckets of {bucket} tokens, so these bins "
                    f"of {width} tokens are computed from states.parquet (token-pooled means; {DEPTH_BOOTSTRAP}-"
                    "replicate bootstrap over prompts).")
        if s["x"]:
            series.append({"name": names[p.teacher], **s})
    if not series:
        return None
    return {"id": f"{key}-fig-depth", "title": "Metrics against response depth",
            "caption": ("Mean per depth bin (tokens into the response), with the "
                        f"{int(ci_level * 100)}% bootstrap CI over prompts as a band. Overlap that falls with depth "
                        "means the teacher's signal decays on long responses (horizon-decay). "
                        + (note or f"Buckets of {bucket} tokens from results.json.")),
            "src": _img(plots.depth_curves(series, "response depth (tokens)"))}


# ------------------------------------------------------------------------------------------------ compare runs
def _ranking_rows(r: ProbeResults, names: dict[str, str], views: dict, key: str) -> list[dict]:
    """The ranking table: every metric with its CI, continuation gain, grad norm, links to the worst rollouts."""
    rows = []
    for rank, p in enumerate(_ranked(r), 1):
        name = p.teacher
        cells = []
        for c in HTML_RANKING:
            e = p.pooled.get(c.metric)
            approx = p.approximate.get(c.metric)
            cells.append({"mean": fmt(e.mean if e else None, c.digits), "ci": ci_range(e, c.digits) if e else "",
                          "approx": (None if not approx else approx["how"] if approx.get("exact_fraction") is None
                                     else f"exact at {approx['exact_fraction']:.0%} of states; {approx['how']}")})
        v = views.get(name, {})
        rows.append({
            "rank": rank, "name": names[name], "full": name, "status": p.verdict.status,
            "cells": cells, "card": f"{key}-card-{r.pairs.index(p)}",
            "gain": gains(p.novelty.continuation) or "–",
            "grad_norm": fmt(p.novelty.grad_norm, general=True),
            "worst": [{"href": ro["id"], "label": f"#{ro['rollout_id']}", "kl": fmt(ro["mean_kl"], 2)}
                      for ro in v.get("rollouts", [])],
        })
    return rows


def _verdict_cards(r: ProbeResults, names: dict[str, str], key: str) -> list[dict]:
    """One card per teacher, best first: status, key numbers, reasons, recommendations, warnings, model."""
    cards = []
    for p in _ranked(r):
        name = p.teacher
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
                         + f"{fmt(e['topk_reverse_kl'].mean, 3)} nats/token")] + _alignment_summary(p),
            "reasons": [{"code": x.code, "severity": x.severity, "metric": x.metric, "value": fmt(x.value),
                         "threshold": fmt(x.threshold), "direction": x.direction, "message": x.message,
                         "numeric": x.value is not None} for x in v.reasons],
            "recommendations": list(v.recommendations),
            "warnings": list(p.warnings),
            "model": {key_: p.model.get(key_) for key_ in ("architecture", "num_parameters", "dtype", "device")
                      if p.model.get(key_) is not None},
        })
    return cards


def _alignment_summary(p) -> list[tuple[str, str]]:
    """A teacher read through text alignment (docs/cross-tokenizer.md): the chunk-level figures its verdict reads."""
    if not p.alignment:
        return []
    e, a = p.pooled, p.alignment
    return [("chunk KL", f"{fmt(e['sampled_reverse_kl'].mean, 3)} nats/token"),
            ("unsupported chunks", fmt(e["chunk_unsupported"].mean, 3)),
            ("aligned positions", f"{fmt(a.get('aligned_share'), 2)} ({a.get('chunks')} chunks; teacher prompts: "
                                  f"{a.get('teacher_rendering')})")]


def _hurt_tables(r: ProbeResults, names: dict[str, str], texts: dict[str, str]) -> list[dict]:
    """Prompts that hurt: each teacher's five prompts with the highest per-prompt top-k KL (chunk-level sampled KL
    for a teacher read through text alignment, which has no top-k KL)."""
    hurt = []
    for p in _ranked(r):
        kl = "sampled_reverse_kl" if p.alignment else "topk_reverse_kl"
        items = [(pid, m) for pid, m in p.per_prompt.items() if num(m.get(kl)) is not None]
        items.sort(key=lambda t: -t[1][kl])
        hurt.append({"name": names[p.teacher], "rows": [
            {"id": pid, "kl": fmt(m.get(kl)), "overlap": fmt(m.get("overlap_ratio")),
             "n": m.get("n_states", "–"), "prompt": texts.get(pid)} for pid, m in items[:5]],
            "total": len(items)})
    return hurt


def _compare_figures(r: ProbeResults, names: dict[str, str], states, k: int, key: str) -> list[dict]:
    """Per-state overlap histogram, depth curves, per-prompt scatter, teacher-against-teacher heatmaps."""
    figs = []
    order = _ranked(r)
    if states is not None:
        figs.append({"id": f"{key}-fig-overlap", "title": "Per-state overlap ratio",
                     "caption": f"Distribution over every student state of |top-{k}(student) ∩ top-{k}(teacher)| / {k}. "
                                "Mass near 1 = the teacher ranks the student's candidate tokens high; mass near 0 = "
                                "a different thinking pattern.",
                     "src": _img(plots.overlap_distribution(
                         [(names[p.teacher], states.loc[states["teacher"] == p.teacher, "overlap_ratio"].to_numpy())
                          for p in order], k))})
    depth = _depth_figure(r, names, states, key)
    if depth:
        figs.append(depth)
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
    return figs


def _compare_notes(states, tokens, prompt_note: str | None) -> list[str]:
    notes = []
    if states is None:
        notes.append("states.parquet is missing: no per-state distribution, depth detail or token view.")
    if tokens is None:
        notes.append("tokens.json is missing (a run made before reports could show token texts): the token view "
                     "shows token ids.")
    if prompt_note:
        notes.append(f"Prompt texts are not shown: {prompt_note}.")
    return notes


def _compare_header(run: Run, names: dict[str, str], k: int) -> dict:
    """What was probed, with what, when: the section's header."""
    r = run.results
    env, ro = r.environment, r.rollouts
    return {
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
        "versions": _library_versions(env),
        "device": env.get("cuda_device") or ("CUDA" if env.get("cuda_available") else "CPU"),
    }


def _compare_section(run: Run, idx: int, max_rollouts: int) -> dict:
    r = run.results
    key = f"run{idx}"
    names = short_names(list(r.ranking) or [p.teacher for p in r.pairs])
    for p in r.pairs:
        names.setdefault(p.teacher, p.teacher)
    states, tokens = read_states(run), read_tokens(run)
    texts, prompt_note = prompt_texts(r, run.path)
    k = int(r.config.get("top_k", 16))
    views, data = token_views(run, r, states, tokens, names, texts, max_rollouts, key)
    rows = _ranking_rows(r, names, views, key)
    templates = [{"name": names[p.teacher], "full": p.teacher, **template_summary(p.templates),
                  "headers": [c.label for c in TEMPLATE_METRICS]}
                 for p in _ranked(r) if p.templates]
    plan = {"title": plan_title(r.plan), "rows": plan_rows(r.plan), "assumptions": list(r.plan.assumptions)} if r.plan \
        else None
    shown = [views[n] for n in r.ranking if n in views]
    for v in shown:
        v["anchor"] = f"{key}-tok-{v['index']}"
    return {
        "kind": "compare", "key": key, "label": run.label, "path": str(run.path), **_compare_header(run, names, k),
        "headers": [c.header() for c in HTML_RANKING], "ci_level": int(float(r.config.get("ci_level", 0.95)) * 100),
        "rows": rows, "cards": _verdict_cards(r, names, key), "gate": r.gate, "warnings": list(r.warnings),
        "hurt": _hurt_tables(r, names, texts), "figs": _compare_figures(r, names, states, k, key),
        "token_views": shown, "data": data, "notes": _compare_notes(states, tokens, prompt_note),
        "max_rollouts": max_rollouts, "thresholds": r.thresholds, "templates": templates, "plan": plan,
    }


# ------------------------------------------------------------------------------------------------ other runs
def _selection_section(run: Run, idx: int) -> dict:
    d = run.selection
    cfg, sel = d["config"], d["selection"]
    key = f"run{idx}"
    rows = [{"label": label, "prompts": d["summary"][k]["prompts"], "cells": selection_cells(d["summary"][k])}
            for k, label in SELECTION_SETS.items()]
    figs, notes = [], []
    scores_file = run.path / "scores.jsonl"
    if scores_file.is_file():
        metric = sel["rank_metric"]
        scores = read_pool_scores(scores_file)
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
        "headers": [c.header(short=True, arrow=False).replace("\n", " ") for c in SELECTION_COLUMNS], "rows": rows,
        "figs": figs,
        "notes": notes, "warnings": list(d.get("warnings", [])), "created_at": d.get("created_at", ""),
        "tool_version": d.get("tool_version", "?"),
        "versions": _library_versions(env),
    }


def _verify_figures(v: dict, view, key: str) -> list[dict]:
    """Arm curves side by side (a controlled-experiment run) or the held-out accuracy (an older run), and the
    per-step metrics of the first teacher seed."""
    figs = []
    panels = [] if view.legacy else curve_panels(v)
    if panels:
        figs.append({"id": f"{key}-fig-arms", "title": "Accuracy of each arm over OPD steps",
                     "caption": "Mean over seeds at each evaluation, with the 95% t-interval over seeds as a band "
                                "(none with one seed); dashed: the untouched student and the teacher model. An arm "
                                "with a cold start starts from the cold-started student at step 0. The verdict uses "
                                "the paired intervals in the table above, not these curves.",
                     "src": _img(plots.verify_arm_curves(panels))})
    if v["steps"]:
        figs.append({"id": f"{key}-fig-steps", "title": "Per-step metrics (first teacher seed)",
                     "caption": "Probe metrics on each OPD step's own batch (before its update) and the gradient norm; "
                                "cold-start steps show their gradient norm. Descriptive: trends decide nothing.",
                     "src": _img(plots.verify_curves(v["steps"]))})
    if view.legacy and v["evals"]:
        figs.append({"id": f"{key}-fig-acc", "title": "Held-out accuracy",
                     "caption": "Accuracy on the --eval-prompts (± 1 standard error), with the teacher's for reference.",
                     "src": _img(plots.verify_accuracy(v["evals"], v.get("teacher_accuracy")))})
    return figs


def _verify_section(run: Run, idx: int) -> dict:
    v = run.verify
    cfg = v["config"]
    key = f"run{idx}"
    view = verify_view(v)
    return {
        "kind": "verify", "key": key, "label": run.label, "path": str(run.path), "view": view,
        "student": cfg.get("student"), "teacher": cfg.get("teacher"), "prompts": cfg.get("prompts"),
        "eval_prompts": cfg.get("eval_prompts"), "retain_prompts": cfg.get("retain_prompts"),
        "created_at": v.get("created_at", ""), "tool_version": v.get("tool_version", "?"),
        "versions": _library_versions(v.get("environment") or {}),
        "headers": {"arms": ARM_HEADERS, "comparisons": COMPARISON_HEADERS, "cold_start": COLD_START_HEADERS,
                    "legacy": LEGACY_HEADERS},
        "figs": _verify_figures(v, view, key),
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
                             "what": f"{s['student']} ← {s['teacher']}", "entries": [(s["view"].verdict,
                                                                                     s["view"].tone)]})
    template = _environment().get_template("report.html.j2")
    return template.render(
        sections=sections, overview=overview, generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=_versions(),
    )


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


