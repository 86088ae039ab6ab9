"""What every report format shows, as plain strings and rows: the console (console.py), Markdown (markdown.py) and
HTML (html.py) render these. No rich, no IO.

- ``fmt``: the one number formatter ("–" for a missing value); ``interval`` and ``ci_range`` build on it;
- ``COLUMNS``: one column per metric of ``metrics.METRICS`` (header words, higher-is-better arrow), and the
  column lists of each table, picked from it;
- display strings of template comparisons, cost plans and prompt selections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..costs import Cost, Projection, Range
from ..metrics import METRICS
from ..served import is_served

MISSING = "–"


# ------------------------------------------------------------------------------------------------ numbers
def num(x: Any) -> float | None:
    """``x`` as a finite float; None for None, NaN, ±inf and what is not a number."""
    if x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def fmt(x: Any, digits: int = 3, *, sign: bool = False, general: bool = False) -> str:
    """A number for display: ``digits`` decimals (``general``: ``digits`` significant digits, as %g), with a sign
    when ``sign``; "–" when ``x`` is missing or not finite."""
    v = num(x)
    if v is None:
        return MISSING
    return f"{v:{'+' if sign else ''}.{digits}{'g' if general else 'f'}}"


def ci_range(e, digits: int = 3) -> str:
    """An Estimate's confidence interval "low–high", one decimal fewer than its mean."""
    return f"{fmt(e.ci_low, digits - 1)}–{fmt(e.ci_high, digits - 1)}"


def interval(mean: Any, low: Any = None, high: Any = None, digits: int = 3, *, sign: bool = False) -> str:
    """A mean and its interval, "0.450 [0.400, 0.500]" (every number by ``fmt``); the bracket is left out when
    both bounds are missing (e.g. one seed: no interval over seeds)."""
    head = fmt(mean, digits, sign=sign)
    if num(low) is None and num(high) is None:
        return head
    return f"{head} [{fmt(low, digits, sign=sign)}, {fmt(high, digits, sign=sign)}]"


def gains(continuation) -> str:
    """Continuation gains (types.ContinuationGain) as "+0.12@0, -0.03@64" (gain at prefix depth); the ones without
    a number are left out."""
    return ", ".join(f"{fmt(c.gain, 2, sign=True)}@{c.depth}" for c in continuation or () if num(c.gain) is not None)


def criterion(ok: bool | None) -> str:
    """A verify success criterion: pass, fail, or n/a when it could not be judged."""
    return "n/a" if ok is None else ("pass" if ok else "fail")


# ------------------------------------------------------------------------------------------------ metric columns
@dataclass(frozen=True)
class MetricColumn:
    """How one metric is headed in a table. ``short``: two-line header of narrow tables (console, selection);
    ``label``: one-line label; ``higher_is_better`` from metrics.METRICS (↑ / ↓ / no arrow)."""

    metric: str
    short: str
    label: str
    higher_is_better: bool | None
    digits: int = 3

    @property
    def arrow(self) -> str:
        return {True: " ↑", False: " ↓"}.get(self.higher_is_better, "")

    def header(self, *, short: bool = False, arrow: bool = True) -> str:
        return (self.short if short else self.label) + (self.arrow if arrow else "")


# metric -> (short header, label); every metric of METRICS has one (tests/test_report.py checks)
_WORDS = {
    "overlap_ratio": ("overlap\nratio", "overlap ratio"),
    "overlap_mass_student": ("mass\nstud.", "mass (student)"),
    "overlap_mass_teacher": ("mass\nteach.", "mass (teacher)"),
    "entropy_gap": ("entropy\ngap", "entropy gap"),
    "entropy_gap_signed": ("signed\nentropy gap", "signed entropy gap"),
    "overlap_token_advantage": ("overlap\nadvantage", "overlap-token advantage"),
    "support_mass": ("support\nmass", "support mass"),
    "unsupported": ("unsup-\nported", "unsupported share"),
    "topk_reverse_kl": ("top-k\nrev. KL", "top-k rev. KL"),
    "sampled_reverse_kl": ("sampled\nrev. KL", "sampled rev. KL"),
    "topk_coverage_student": ("cov.\nstud.", "coverage (student)"),
    "topk_coverage_teacher": ("cov.\nteach.", "coverage (teacher)"),
    "top1_agreement": ("top-1\nagree", "top-1 agree"),
    "student_entropy": ("student\nentropy", "student entropy"),
    "teacher_entropy": ("teacher\nentropy", "teacher entropy"),
}
COLUMNS: dict[str, MetricColumn] = {m: MetricColumn(m, *_WORDS[m], higher_is_better=hib)
                                    for m, (_, hib) in METRICS.items()}


def columns(*names: str) -> tuple[MetricColumn, ...]:
    return tuple(COLUMNS[m] for m in names)


# the tables' columns, in their order
# the console drops the teacher-side mass and coverage (in the HTML and results.json) to fit a terminal
CONSOLE_RANKING = columns("overlap_ratio", "overlap_mass_student", "support_mass", "unsupported", "entropy_gap",
                          "topk_reverse_kl", "sampled_reverse_kl", "topk_coverage_student", "top1_agreement")
HTML_RANKING = columns("overlap_ratio", "overlap_mass_student", "overlap_mass_teacher", "support_mass",
                       "unsupported", "entropy_gap", "topk_reverse_kl", "sampled_reverse_kl", "top1_agreement")
TEMPLATE_METRICS = columns("overlap_ratio", "overlap_mass_student", "topk_reverse_kl", "entropy_gap")
SELECTION_COLUMNS = columns("overlap_ratio", "overlap_mass_student", "overlap_mass_teacher", "topk_reverse_kl",
                            "entropy_gap", "student_entropy", "teacher_entropy")
DEPTH_METRICS = ("overlap_ratio", "overlap_mass_student", "entropy_gap", "topk_reverse_kl")  # the depth plot's panels


# ------------------------------------------------------------------------------------------------ names
def short_names(names: list[str]) -> dict[str, str]:
    """Folder names instead of full paths when they are unique (hub ids keep their org/ prefix; a served teacher
    is its model name with "served:" before it)."""
    def short(n: str) -> str:
        if is_served(n):
            return "served:" + (n.partition("#")[2] or n.split("//", 1)[1])
        parts = n.rstrip("/").split("/")
        return "/".join(parts[-2:]) if len(parts) == 2 and not n.startswith((".", "/", "~")) else parts[-1]

    shorts = {n: short(n) for n in names}
    return shorts if len(set(shorts.values())) == len(shorts) else {n: n for n in names}


# ------------------------------------------------------------------------------------------------ templates
def template_summary(t: dict) -> dict:
    """Display strings of one pair's template comparison (pairs[].templates), shared by every report format."""
    out: dict = {"unavailable": t.get("unavailable"), "identical": bool(t.get("identical")),
                 "differences": list(t.get("differences") or []), "diff": list(t.get("diff") or []),
                 "example": t.get("example"), "rows": [], "delta": [], "recommended": t.get("recommended"),
                 "reason": t.get("reason"), "primary": t.get("primary"),
                 "student_rendering": t.get("student_rendering", "chat template")}
    pooled = t.get("pooled")
    if pooled:
        for who in ("student", "teacher"):
            out["rows"].append((f"{who}'s template", [fmt((pooled[who].get(c.metric) or {}).get("mean"), c.digits)
                                                      for c in TEMPLATE_METRICS]))
        for c in TEMPLATE_METRICS:
            e = (t.get("delta") or {}).get(c.metric) or {}
            d = c.digits
            out["delta"].append(f"{c.label} {fmt(e.get('mean'), d, sign=True)} [{fmt(e.get('ci_low'), d, sign=True)}, "
                                f"{fmt(e.get('ci_high'), d, sign=True)}]")
    return out


# ------------------------------------------------------------------------------------------------ cost plan
def duration(seconds) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def tokens(n) -> str:
    if n is None:
        return MISSING
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def plan_rows(plan: Projection) -> list[tuple[str, str, str, str]]:
    """(what, tokens low–high, measured rate, time low–high) rows of a cost projection."""
    names = short_names(list(plan.teachers))

    def row(what: str, n: Range, c: Cost) -> tuple[str, str, str, str]:
        return (what, f"{tokens(n.low)} – {tokens(n.high)}",
                f"{c.tokens_per_second:.1f} tokens/s" if c.tokens_per_second else "not measured",
                f"{duration(c.seconds.low)} – {duration(c.seconds.high)}")

    return [row("student sampling (response tokens)", plan.response_tokens, plan.sampling)] + [
        row(f"teacher {names[name]} scoring (prompt + response)", plan.scored_tokens, c)
        for name, c in plan.teachers.items()]


def plan_title(plan: Projection) -> str:
    p = plan.plan
    return (f"cost of the planned OPD run: {p.steps} steps x {p.batch} sequences, responses up to "
            f"{p.max_tokens} tokens, on {plan.device} ({plan.backend})")


# ------------------------------------------------------------------------------------------------ select-prompts
RANK_WORDS = {"overlap_mass_student": "student overlap mass", "overlap_ratio": "overlap ratio",
              "topk_reverse_kl": "top-k reverse KL"}
SELECTION_SETS = {"pool": "pool (scored)", "kept": "kept", "aligned": "aligned", "ood": "out-of-distribution"}


def selection_headline(doc: dict) -> str:
    s, pool = doc["selection"], doc["pool"]
    what = RANK_WORDS.get(s["rank_metric"], s["rank_metric"])
    cut = s.get("aligned_cutoff")
    cut_text = f" ({'>=' if s['higher_is_aligned'] else '<='} {cut:.4f})" if cut is not None else ""
    return (f"kept {s['aligned'] + s['ood']} of {pool['scored']} scored pool prompts: {s['aligned']} most "
            f"teacher-aligned by {what}{cut_text} + {s['ood']} drawn at random from the rest "
            f"(--ood-fraction {s['ood_fraction']:g})")


def selection_deltas(doc: dict) -> str:
    """How the kept set differs from the pool, in one line."""
    pool, kept = doc["summary"]["pool"], doc["summary"]["kept"]
    parts = []
    for m, label in (("overlap_mass_student", "mass"), ("overlap_ratio", "overlap"),
                     ("topk_reverse_kl", "top-k KL"), ("student_entropy", "student entropy")):
        if pool.get(m) is not None and kept.get(m) is not None:
            parts.append(f"{label} {fmt(kept[m] - pool[m], 3, sign=True)}")
    return "kept minus pool (means over prompts): " + ", ".join(parts)


def selection_cells(row: dict) -> list[str]:
    """One row of the selection table (a set's means), in SELECTION_COLUMNS order."""
    return [fmt(row.get(c.metric), c.digits) for c in SELECTION_COLUMNS]
