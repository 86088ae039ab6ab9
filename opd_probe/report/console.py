"""Rich rendering: the ranking table (stdout) and progress bars (stderr)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..types import ProbeResults

# (metric, column header, decimals)
COLUMNS = [
    ("overlap_ratio", "overlap\nratio ↑", 3),
    ("overlap_mass_student", "mass\nstud. ↑", 3),
    ("overlap_mass_teacher", "mass\nteach. ↑", 3),
    ("entropy_gap", "entropy\ngap ↓", 3),
    ("topk_reverse_kl", "top-k\nrev. KL", 3),
    ("sampled_reverse_kl", "sampled\nrev. KL", 3),
    ("topk_coverage_student", "cov.\nstud.", 3),
    ("topk_coverage_teacher", "cov.\nteach.", 3),
    ("top1_agreement", "top-1\nagree ↑", 3),
]


_STATUS = {"go": ("GO", "bold green"), "caution": ("CAUTION", "bold yellow"), "no-go": ("NO-GO", "bold red")}
STATUS_STYLE = {k: f"[{style}]{label}[/]" for k, (label, style) in _STATUS.items()}
STATUS_PADDED = {k: f"[{style}]{label:<8}[/]" for k, (label, style) in _STATUS.items()}


def _fmt(x: float, d: int) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def _ci(e, d: int) -> str:
    return f"{_fmt(e.ci_low, d - 1)}–{_fmt(e.ci_high, d - 1)}"


def short_names(names: list[str]) -> dict[str, str]:
    """Folder names instead of full paths when they are unique (hub ids keep their org/ prefix)."""
    def short(n: str) -> str:
        parts = n.rstrip("/").split("/")
        return "/".join(parts[-2:]) if len(parts) == 2 and not n.startswith((".", "/", "~")) else parts[-1]

    shorts = {n: short(n) for n in names}
    return shorts if len(set(shorts.values())) == len(shorts) else {n: n for n in names}


def ranking_table(results: ProbeResults) -> Table:
    cfg = results.config
    ro = results.rollouts
    title = (
        f"student {short_names([results.student.get('path', '?')])[results.student.get('path', '?')]} · {ro['prompts']} prompts × {ro['samples_per_prompt']} samples · "
        f"{ro['states']} states · k={cfg['top_k']}"
    )
    caption = (f"mean, and below it the {int(cfg['ci_level'] * 100)}% bootstrap CI over prompts; KL and entropy in "
               "nats/token; ranked by verdict, then novelty evidence, then overlap mass")
    if any(p.approximate for p in results.pairs):
        caption += "; ≈ approximate (vLLM estimate: see the warnings)"
    table = Table(title=title, caption=caption, header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("teacher", overflow="fold", min_width=12)
    table.add_column("verdict")
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="right")
    by_name = {p.teacher: p for p in results.pairs}
    names = short_names(list(results.ranking))
    for rank, name in enumerate(results.ranking, 1):
        pair = by_name[name]
        cells = []
        for metric, _, d in COLUMNS:
            e = pair.pooled[metric]
            mark = "≈" if metric in pair.approximate else ""
            cells.append(f"{mark}{_fmt(e.mean, d)}\n[dim]{_ci(e, d)}[/dim]")
        status = (pair.verdict or {}).get("status", "–")
        table.add_row(str(rank), names[name], STATUS_STYLE.get(status, status), *cells)
    return table


def verdict_lines(results: ProbeResults) -> list[str]:
    """One block per teacher, best first: status, each reason with its numbers, then the recommendations."""
    names = short_names(list(results.ranking))
    by = {p.teacher: p for p in results.pairs}
    width = max(len(n) for n in names.values())
    lines = []
    for name in results.ranking:
        v = by[name].verdict
        if not v:
            continue
        e = by[name].pooled
        head = (f"{escape(names[name]):<{width}}  {STATUS_PADDED[v['status']]}  overlap {_fmt(e['overlap_ratio'].mean, 2)} "
                f"[{_fmt(e['overlap_ratio'].ci_low, 2)}, {_fmt(e['overlap_ratio'].ci_high, 2)}]  mass "
                f"{_fmt(e['overlap_mass_student'].mean, 2)}  signal {_fmt(e['topk_reverse_kl'].mean, 3)} nats/token")
        cont = by[name].novelty.get("continuation")
        if cont:
            head += "  gain " + ", ".join(f"{c['gain']:+.2f}@{c['depth']}" for c in cont)
        if "grad_norm" in by[name].novelty:
            head += f"  grad-norm {by[name].novelty['grad_norm']:.3g}"
        lines.append(head)
        pad = " " * (width + 2)
        for r in v["reasons"]:
            if r["value"] is None:
                lines.append(f"{pad}[dim]{r['code']}:[/dim] {escape(r['message'])}")
            else:
                lines.append(f"{pad}{r['code']}: {r['metric']} {_fmt(r['value'], 3)} {r['direction']} "
                             f"{_fmt(r['threshold'], 3)}  [dim]{escape(r['message'])}[/dim]")
        for rec in v["recommendations"]:
            lines.append(f"{pad}-> {escape(rec)}")
    return lines


def print_results(results: ProbeResults, stdout: Console, stderr: Console) -> None:
    stdout.print(ranking_table(results))
    for line in verdict_lines(results):
        stdout.print(line, highlight=False)
    for w in results.warnings:
        stderr.print(f"[yellow]warning:[/yellow] {w}")
    for p in results.pairs:
        for w in p.warnings:
            stderr.print(f"[yellow]warning ({p.teacher}):[/yellow] {w}")


def print_verify(result, stdout: Console) -> None:
    """Outcome of a verify run: step-0 probe metrics, criteria, accuracy, and the observed outcome."""
    c = result.criteria
    t = Table(title=f"verify: {result.config['student']} <- {result.config['teacher']} "
                    f"({result.config['steps']} OPD steps, loss={result.config['loss']})", header_style="bold")
    t.add_column("criterion")
    t.add_column("first steps", justify="right")
    t.add_column("last steps", justify="right")
    t.add_column("result")
    ok = lambda b: "[green]pass[/green]" if b else "[red]fail[/red]"  # noqa: E731
    t.add_row("overlap ratio rises", f"{c['overlap_first']:.3f}", f"{c['overlap_last']:.3f}", ok(c["overlap_rises"]))
    t.add_row("top-k reverse KL falls", f"{c['kl_first']:.3f}", f"{c['kl_last']:.3f}", ok(c["kl_falls"]))
    if "accuracy" in c:
        t.add_row("held-out accuracy (noise ±%.3f)" % c["accuracy_noise"], f"{c['accuracy_start']:.3f}",
                  f"{c['accuracy_end']:.3f}", {"improves": "[green]improves[/green]", "flat": "flat",
                                                "drops": "[red]drops[/red]"}[c["accuracy"]])
    stdout.print(t)
    s0 = result.step0
    stdout.print(f"probe at step 0 (first batch, before any update): overlap {s0['overlap_ratio']:.3f}, mass "
                 f"{s0['overlap_mass_student']:.3f}, entropy gap {s0['entropy_gap']:.3f}, top-k KL "
                 f"{s0['topk_reverse_kl']:.3f}, grad norm {s0['grad_norm']:.3g}")
    if result.teacher_accuracy:
        gr = result.gap_recovery
        stdout.print(f"teacher accuracy {result.teacher_accuracy['accuracy']:.3f}; gap recovery "
                     f"{'–' if gr is None else f'{gr:.2f}'}")
    verdict = "[green]PASSED[/green]" if c["passed"] else "[red]FAILED[/red]"
    if result.prediction:
        codes = sorted({r["code"] for r in result.prediction["reasons"]}) or ["no reasons"]
        stdout.print(f"probe predicted: {STATUS_STYLE[result.prediction['status']]} ({', '.join(codes)})")
    stdout.print(f"observed outcome: [bold]{result.outcome}[/bold]; success criteria {verdict}")


class RichProgress:
    """pipeline.Progress on stderr: one bar per stage, log lines above it."""

    def __init__(self, console: Console, enabled: bool = True):
        self.console = console
        self.enabled = enabled
        self._bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False, disable=not enabled,
        )
        self._task = None

    def __enter__(self):
        self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)

    def stage(self, name: str, total: int) -> None:
        if self._task is not None:
            self._bar.stop_task(self._task)
        self._task = self._bar.add_task(name, total=total)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._bar.advance(self._task, n)

    def status(self, text: str) -> None:
        if self._task is not None:
            self._bar.update(self._task, description=text)

    def log(self, message: str) -> None:
        if self.enabled:
            self._bar.console.print(f"[dim]{escape(message)}[/dim]")
