"""Report plots (matplotlib, Agg): every function takes plain data and returns PNG bytes.

No pyplot: figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas, so nothing here
touches matplotlib's global backend or state. PNGs are palette-quantised to keep the HTML report small.
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np

from . import view
from .view import COLUMNS

# colour-blind-safe cycle (Okabe-Ito), one colour per teacher
COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
_DEPTH_TITLES = {"overlap_ratio": "overlap ratio", "overlap_mass_student": "overlap mass (student)",
                 "entropy_gap": "entropy gap (nats)", "topk_reverse_kl": "top-k reverse KL (nats/token)"}
# (metric, panel title with its higher-is-better arrow) of the depth plot
DEPTH_METRICS = [(m, _DEPTH_TITLES[m] + COLUMNS[m].arrow) for m in view.DEPTH_METRICS]
VERIFY_METRICS = [
    ("overlap_ratio", "overlap ratio"),
    ("topk_reverse_kl", "top-k reverse KL (nats/token)"),
    ("entropy_gap", "entropy gap (nats)"),
    ("grad_norm", "gradient norm (before clipping)"),
]
DPI = 96


def color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    return fig


def _png(fig) -> bytes:
    """Render to PNG; quantise to a 256-colour palette (plots have few colours), which cuts the size ~3x."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    buf = io.BytesIO()
    canvas.print_png(buf)
    try:
        from PIL import Image

        buf.seek(0)
        img = Image.open(buf).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
        out = io.BytesIO()
        img.save(out, format="PNG", optimize=True)
        return out.getvalue()
    except Exception:  # noqa: BLE001 - Pillow missing or too old: the unquantised PNG is still valid
        return buf.getvalue()


def _style(ax) -> None:
    ax.grid(True, alpha=0.3, linewidth=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8)


def _finite(x) -> float:
    return float("nan") if x is None else float(x)


# ------------------------------------------------------------------------------------------------ compare runs
def overlap_distribution(per_teacher: Sequence[tuple[str, np.ndarray]], k: int) -> bytes:
    """Histogram (fraction of states) of the per-state overlap ratio |S∩T|/k, one step line per teacher."""
    fig = _figure(7.5, 3.4)
    ax = fig.add_subplot()
    edges = (np.arange(k + 2) - 0.5) / k
    for i, (name, values) in enumerate(per_teacher):
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        if not len(v):
            continue
        counts, _ = np.histogram(v, bins=edges)
        ax.stairs(counts / len(v), edges, label=f"{name} (mean {v.mean():.2f})", color=color(i), linewidth=1.6)
    ax.set_xlim(-0.5 / k, 1 + 0.5 / k)
    ax.set_xlabel(f"overlap ratio at a state  |top-{k}(student) ∩ top-{k}(teacher)| / {k}", fontsize=9)
    ax.set_ylabel("fraction of states", fontsize=9)
    _style(ax)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    return _png(fig)


def depth_curves(series: Sequence[dict[str, Any]], x_label: str) -> bytes:
    """2x2 panels (overlap ratio, overlap mass, entropy gap, top-k KL) against response depth.

    ``series``: one dict per teacher: {"name", "x": [...], "metrics": {metric: (mean[], low[], high[])}}.
    CI bands are drawn where low/high are finite; single buckets show as points with error bars.
    """
    fig = _figure(9.5, 5.6)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    for ax, (metric, title) in zip(axes, DEPTH_METRICS):
        for i, s in enumerate(series):
            if metric not in s["metrics"]:
                continue
            x = np.asarray(s["x"], dtype=float)
            mean, low, high = (np.asarray([_finite(v) for v in arr], dtype=float) for arr in s["metrics"][metric])
            c = color(i)
            if len(x) == 1:
                ax.errorbar(x, mean, yerr=[np.nan_to_num(mean - low), np.nan_to_num(high - mean)], fmt="o",
                            color=c, capsize=3, label=s["name"])
            else:
                ax.plot(x, mean, "-o", color=c, markersize=3, linewidth=1.4, label=s["name"])
                ok = np.isfinite(low) & np.isfinite(high)
                if ok.any():
                    ax.fill_between(x, np.where(ok, low, mean), np.where(ok, high, mean), color=c, alpha=0.18,
                                    linewidth=0)
        ax.set_title(title, fontsize=9)
        _style(ax)
    for ax in axes[2:]:
        ax.set_xlabel(x_label, fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8, frameon=False)
    return _png(fig)


def per_prompt_scatter(per_teacher: Sequence[tuple[str, Sequence[float], Sequence[float]]]) -> bytes:
    """Per prompt: overlap ratio (x) against top-k reverse KL (y), one colour per teacher. Bottom right is good."""
    fig = _figure(7.5, 3.8)
    ax = fig.add_subplot()
    for i, (name, xs, ys) in enumerate(per_teacher):
        x = np.asarray([_finite(v) for v in xs], dtype=float)
        y = np.asarray([_finite(v) for v in ys], dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[ok], y[ok], s=18, alpha=0.75, color=color(i), label=name, edgecolors="none")
    ax.set_xlabel("overlap ratio (prompt mean)", fontsize=9)
    ax.set_ylabel("top-k reverse KL (nats/token)", fontsize=9)
    _style(ax)
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def distinguishability(names: Sequence[str], overlap: Sequence[Sequence[float]],
                       kl: Sequence[Sequence[float]]) -> bytes:
    """Teacher-vs-teacher heatmaps at the student's states: top-k overlap and symmetric KL, values annotated."""
    n = len(names)
    fig = _figure(min(4.2 * 2 + 0.35 * n, 12), 2.6 + 0.35 * n)
    axes = fig.subplots(1, 2)
    for ax, mat, title, cmap in ((axes[0], overlap, "top-k overlap of the two teachers ↑", "Blues"),
                                 (axes[1], kl, "symmetric top-k KL (nats/token)", "Reds")):
        m = np.asarray([[_finite(v) for v in row] for row in mat], dtype=float)
        vmax = 1.0 if "overlap" in title else max(float(np.nanmax(m)) if np.isfinite(m).any() else 1.0, 1e-6)
        im = ax.imshow(m, cmap=cmap, vmin=0, vmax=vmax)
        ax.set_xticks(range(n), labels=names, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels=names, fontsize=8)
        for a in range(n):
            for b in range(n):
                v = m[a, b]
                txt = "–" if not math.isfinite(v) else (f"{v:.2f}" if v < 100 else f"{v:.0f}")
                ax.text(b, a, txt, ha="center", va="center", fontsize=8,
                        color="white" if math.isfinite(v) and v > 0.6 * vmax else "black")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    return _png(fig)


# ------------------------------------------------------------------------------------------------ verify runs
def verify_curves(steps: Sequence[dict[str, Any]]) -> bytes:
    """Per-step probe metrics and gradient norm over the OPD steps (cold-start steps show their grad norm)."""
    fig = _figure(9.5, 5.2)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    opd = [r for r in steps if r.get("phase") == "opd"]
    cold = [r for r in steps if r.get("phase") == "cold-start"]
    for ax, (metric, title) in zip(axes, VERIFY_METRICS):
        x = [r["step"] for r in opd]
        y = [_finite(r.get(metric)) for r in opd]
        ax.plot(x, y, "-o", color=COLORS[0], markersize=3, linewidth=1.4, label="OPD")
        if metric == "grad_norm" and cold:
            ax.plot([r["step"] for r in cold], [_finite(r.get(metric)) for r in cold], "-o", color=COLORS[1],
                    markersize=3, linewidth=1.2, label="cold start (SFT)")
            ax.legend(fontsize=8, frameon=False)
        ax.set_title(title, fontsize=9)
        _style(ax)
    for ax in axes[2:]:
        ax.set_xlabel("step", fontsize=8)
    return _png(fig)


def verify_accuracy(evals: Sequence[dict[str, Any]], teacher: dict | None) -> bytes:
    """Held-out accuracy per evaluation (± 1 SE), with the teacher's accuracy as a reference line."""
    fig = _figure(7.5, 3.0)
    ax = fig.add_subplot()
    phases = {"before": ("before OPD", COLORS[7]), "cold-start": ("after cold start", COLORS[1]),
              "opd": ("during / after OPD", COLORS[0])}
    for phase, (label, c) in phases.items():
        rows = [e for e in evals if e.get("phase") == phase]
        if rows:
            ax.errorbar([e["step"] for e in rows], [e["accuracy"] for e in rows], yerr=[e.get("se", 0) for e in rows],
                        fmt="-o" if phase == "opd" else "o", color=c, capsize=3, markersize=4, label=label)
    if teacher:
        ax.axhline(teacher["accuracy"], color=COLORS[2], linestyle="--", linewidth=1.2,
                   label=f"teacher {teacher['accuracy']:.2f}")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("OPD step", fontsize=9)
    ax.set_ylabel("held-out accuracy", fontsize=9)
    _style(ax)
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


# ------------------------------------------------------------------------------------------------ select-prompts
def selection_distribution(pool, aligned, ood, label: str, cutoff: float | None) -> bytes:
    """Histogram (prompt counts) of the per-prompt alignment score: the whole scored pool, and the kept prompts
    split into the aligned top and the out-of-distribution draw; the aligned cut-off as a dashed line."""
    fig = _figure(7.5, 3.2)
    ax = fig.add_subplot()
    pool = np.asarray([x for x in pool if x is not None and math.isfinite(x)], dtype=float)
    lo, hi = (float(pool.min()), float(pool.max())) if len(pool) else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, 31)
    ax.hist(pool, bins=edges, color="#bbbbbb", label=f"pool ({len(pool)})")
    parts = [(np.asarray(aligned, dtype=float), color(0), "kept: aligned"),
             (np.asarray(ood, dtype=float), color(1), "kept: out-of-distribution")]
    ax.hist([p for p, _, _ in parts], bins=edges, color=[c for _, c, _ in parts], stacked=True,
            label=[f"{n} ({len(p)})" for p, _, n in parts])
    if cutoff is not None and math.isfinite(cutoff):
        ax.axvline(cutoff, color="#222222", linestyle="--", linewidth=1, label="aligned cut-off")
    ax.set_xlabel(f"per-prompt {label}", fontsize=9)
    ax.set_ylabel("prompts", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    _style(ax)
    return _png(fig)


def verify_arm_curves(panels: Sequence[dict[str, Any]]) -> bytes:
    """Accuracy of each arm over OPD steps, side by side: one panel per measured set (target, retention), each arm
    its mean over seeds with the interval over seeds as a band, reference lines (the untouched student, the
    teacher model) dashed. ``panels``: verifyview.curve_panels."""
    fig = _figure(4.6 * len(panels) + 0.6, 3.3)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, panel in zip(axes, panels):
        for i, s in enumerate(panel["series"]):
            x = np.asarray(s["x"], dtype=float)
            mean, low, high = (np.asarray([_finite(v) for v in s[k]], dtype=float) for k in ("mean", "low", "high"))
            ax.plot(x, mean, "-o", color=color(i), markersize=3.5, linewidth=1.5, label=s["name"])
            ok = np.isfinite(low) & np.isfinite(high)
            if ok.any():
                ax.fill_between(x, np.where(ok, low, mean), np.where(ok, high, mean), color=color(i), alpha=0.18,
                                linewidth=0)
        for j, (name, y) in enumerate(panel["refs"]):
            ax.axhline(y, color=(COLORS[7], COLORS[2])[j % 2], linestyle="--", linewidth=1.1,
                       label=f"{name} {view.fmt(y, 2)}")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlabel("OPD step", fontsize=8)
        _style(ax)
        ax.legend(fontsize=7.5, frameon=False)
    return _png(fig)
