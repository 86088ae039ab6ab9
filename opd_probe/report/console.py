"""Rich rendering: the ranking table (stdout) and progress bars (stderr)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..costs import Projection
from ..types import ProbeResults
from .view import (CONSOLE_RANKING, SELECTION_COLUMNS, SELECTION_SETS, TEMPLATE_METRICS, ci_range, fmt, gains,
                   plan_rows, plan_title, selection_cells, selection_deltas, selection_headline, short_names,
                   template_summary)
from .verifyview import ARM_HEADERS, COLD_START_HEADERS, COMPARISON_HEADERS, LEGACY_HEADERS, verify_view


_STATUS = {"go": ("GO", "bold green"), "caution": ("CAUTION", "bold yellow"), "no-go": ("NO-GO", "bold red")}
STATUS_STYLE = {k: f"[{style}]{label}[/]" for k, (label, style) in _STATUS.items()}
STATUS_PADDED = {k: f"[{style}]{label:<8}[/]" for k, (label, style) in _STATUS.items()}


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
        caption += "; ≈ approximate (see the warnings)"
    table = Table(title=title, caption=caption, header_style="bold")
    table.add_column("#", justify="right")
    table.add_column("teacher", overflow="fold", min_width=12)
    table.add_column("verdict")
    for c in CONSOLE_RANKING:
        table.add_column(c.header(short=True), justify="right")
    by_name = {p.teacher: p for p in results.pairs}
    names = short_names(list(results.ranking))
    for rank, name in enumerate(results.ranking, 1):
        pair = by_name[name]
        cells = []
        for c in CONSOLE_RANKING:
            e = pair.pooled[c.metric]
            mark = "≈" if c.metric in pair.approximate else ""
            cells.append(f"{mark}{fmt(e.mean, c.digits)}\n[dim]{ci_range(e, c.digits)}[/dim]")
        status = pair.verdict.status
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
        e = by[name].pooled
        head = (f"{escape(names[name]):<{width}}  {STATUS_PADDED[v.status]}  overlap {fmt(e['overlap_ratio'].mean, 2)} "
                f"[{fmt(e['overlap_ratio'].ci_low, 2)}, {fmt(e['overlap_ratio'].ci_high, 2)}]  mass "
                f"{fmt(e['overlap_mass_student'].mean, 2)}  ")
        if by[name].alignment:  # another tokenizer: the chunk-level figures its verdict reads (crossverdict.py)
            head += (f"chunk KL {fmt(e['sampled_reverse_kl'].mean, 3)} nats/token  unsupported chunks "
                     f"{fmt(e['chunk_unsupported'].mean, 3)}  aligned {fmt(e['aligned'].mean, 2)}")
        else:
            head += f"signal {fmt(e['topk_reverse_kl'].mean, 3)} nats/token"
        novelty = by[name].novelty
        if novelty.continuation:
            head += "  gain " + gains(novelty.continuation)
        if novelty.grad_norm is not None:
            head += f"  grad-norm {fmt(novelty.grad_norm, general=True)}"
        lines.append(head)
        pad = " " * (width + 2)
        for r in v.reasons:
            if r.value is None:
                lines.append(f"{pad}[dim]{r.code}:[/dim] {escape(r.message)}")
            else:
                lines.append(f"{pad}{r.code}: {r.metric} {fmt(r.value, 3)} {r.direction} "
                             f"{fmt(r.threshold, 3)}  [dim]{escape(r.message)}[/dim]")
        for rec in v.recommendations:
            lines.append(f"{pad}-> {escape(rec)}")
    return lines


# ------------------------------------------------------------------------------------------------ templates
EXAMPLE_CHARS = 600


def _clip(text: str, n: int = EXAMPLE_CHARS) -> str:
    return text if len(text) <= n else text[:n] + f"… ({len(text) - n} more characters in results.json)"


def template_lines(results: ProbeResults) -> list[str]:
    """The template comparison of every teacher that has one (compare --template)."""
    names = short_names([p.teacher for p in results.pairs])
    lines = []
    for p in results.pairs:
        t = p.templates
        if not t:
            continue
        s = template_summary(t)
        lines.append(f"[bold]chat templates[/bold] for teacher {escape(names[p.teacher])} (same student states; "
                     f"the verdict uses the {s['primary']}'s)")
        if s["unavailable"]:
            lines.append(f"  {escape(s['unavailable'])}")
            continue
        if s["rows"]:
            head = "  " + " " * 18 + "".join(f"{c.label:>16}" for c in TEMPLATE_METRICS)
            lines.append(head)
            for label, cells in s["rows"]:
                lines.append(f"  {label:<18}" + "".join(f"{c:>16}" for c in cells))
            lines.append("  teacher minus student: " + ", ".join(s["delta"]))
            lines.append(f"  -> recommended: the {s['recommended']}'s template ({escape(s['reason'])})")
        if s["identical"]:
            lines.append("  both templates render every probe prompt to the same token ids")
        for d in s["differences"]:
            lines.append(f"  differs: {escape(d)}")
        ex = s["example"]
        if ex and not s["identical"]:
            for who in ("student", "teacher"):
                label = f"{who}'s rendering" + (f" ({s['student_rendering']})" if who == "student" else "")
                lines.append(f"  {label} of prompt {escape(str(ex['prompt_id']))}:")
                lines.append("[dim]" + escape(_clip(ex[who])).replace("\n", "\n    ").join(["    ", ""]) + "[/dim]")
    return lines


# ------------------------------------------------------------------------------------------------ cost plan
def plan_table(plan: Projection) -> Table:
    table = Table(title=plan_title(plan), header_style="bold",
                  caption="low: the probe's mean response length; high: every response at the planned cap")
    for h, j in (("", "left"), ("tokens (low – high)", "right"), ("measured here", "right"),
                 ("time (low – high)", "right")):
        table.add_column(h, justify=j)
    for row in plan_rows(plan):
        table.add_row(*(escape(c) for c in row))
    return table


def print_plan(plan: dict, stdout: Console) -> None:
    stdout.print(plan_table(plan))
    stdout.print("assumptions:", highlight=False)
    for a in plan.assumptions:
        stdout.print(f"  - {escape(a)}", highlight=False)


def print_results(results: ProbeResults, stdout: Console, stderr: Console) -> None:
    stdout.print(ranking_table(results))
    for line in verdict_lines(results):
        stdout.print(line, highlight=False)
    for line in template_lines(results):
        stdout.print(line, highlight=False)
    if results.plan:
        print_plan(results.plan, stdout)
    for w in results.warnings:
        stderr.print(f"[yellow]warning:[/yellow] {w}")
    for p in results.pairs:
        for w in p.warnings:
            stderr.print(f"[yellow]warning ({p.teacher}):[/yellow] {w}")


VERDICT_STYLE = {"go": "bold green", "caution": "bold yellow", "no-go": "bold red"}


def _rows_table(headers, rows, title: str | None = None, caption: str | None = None) -> Table:
    """A plain table of display strings (the first column left-aligned, the others right-aligned)."""
    t = Table(title=title, caption=caption, header_style="bold")
    for i, h in enumerate(headers):
        t.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        t.add_row(*(escape(c) for c in row))
    return t


def print_verify(result, stdout: Console) -> None:
    """A verify run (a VerifyResult or the verify.json dict), verdict first: its reasons and power estimate, the
    arms, the paired comparisons, the prediction beside the outcome, the cold start, trends and notes."""
    v = verify_view(result if isinstance(result, dict) else result.to_dict())
    say = lambda text: stdout.print(text, highlight=False)  # noqa: E731
    say(f"[{VERDICT_STYLE[v.tone]}]{escape(v.verdict_line)}[/]  [dim]{escape(v.student)} <- {escape(v.teacher)}[/dim]")
    for r in v.reasons:
        say(f"  {escape(r)}")
    if v.power:
        say(f"  [yellow]{escape(v.power)}[/yellow]")
    if v.prediction_line:
        say(f"probe predicted {STATUS_STYLE[v.prediction_status]} {escape(v.prediction_line)}")
    say(f"[dim]{escape(v.settings)}[/dim]")
    if v.legacy:
        stdout.print(_rows_table(LEGACY_HEADERS, v.legacy_rows))
        say(f"probe at step 0 (first batch, before any update): {escape(v.step0)}")
        if v.teacher_accuracy:
            say(f"teacher accuracy {v.teacher_accuracy}")
    if v.arm_rows:
        stdout.print(_rows_table(ARM_HEADERS, v.arm_rows, title="arms", caption=v.arm_caption))
    if v.comparison_rows:
        stdout.print(_rows_table(COMPARISON_HEADERS, v.comparison_rows, caption=v.seed_note,
                                 title="paired comparisons (95% CI over problems and seeds)"))
    if v.cold_start_rows:
        say(escape(v.cold_start))
        stdout.print(_rows_table(COLD_START_HEADERS, v.cold_start_rows))
    if not v.legacy:
        say(f"[dim]probe at step 0: {escape(v.step0)}[/dim]")
    if v.trends:
        say(f"[dim]{escape(v.trends)}[/dim]")
    for n in v.notes:
        say(f"[yellow]note:[/yellow] {escape(n)}")


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


def print_selection(doc: dict, stdout: Console, stderr: Console) -> None:
    cfg = doc["config"]
    table = Table(title=f"select-prompts: {escape(cfg['student'])} <- {escape(cfg['teacher'])} · "
                        f"{doc['pool']['count']} pool prompts × {cfg['probe_samples']} samples · k={cfg['top_k']}",
                  caption="means over prompts of each prompt's mean over its own states; KL and entropy in nats",
                  header_style="bold")
    table.add_column("set")
    table.add_column("prompts", justify="right")
    for c in SELECTION_COLUMNS:
        table.add_column(c.header(short=True, arrow=False), justify="right")
    for key, label in SELECTION_SETS.items():
        row = doc["summary"][key]
        label = label if key in ("pool", "kept") else "  " + label  # the two parts of the kept set, indented
        table.add_row(label, str(row["prompts"]), *selection_cells(row))
    stdout.print(table)
    stdout.print(escape(selection_headline(doc)), highlight=False)
    stdout.print(escape(selection_deltas(doc)), highlight=False)
    for w in doc.get("warnings", []):
        stderr.print(f"[yellow]warning:[/yellow] {escape(w)}")


MIN_RARER_OUTCOME = 5


def print_prediction_table(rows: list[dict], stdout: Console, scorecard: dict | None = None) -> None:
    """The demo's closing table: each verdict beside the OPD outcome measured on the same pair (demo.prediction_rows)."""
    t = Table(title="probe verdict vs. real OPD on the same pair (docs/zoo.md)", header_style="bold",
              caption="measured: held-out hard accuracy before → after OPD, per OPD seed; OPD works when every seed "
                      "gains and the mean gain is at least 0.10; teacher's accuracy")
    for col in ("student ← teacher", "verdict (reasons)", "measured OPD outcome", "prediction"):
        t.add_column(col)
    for r in rows:
        verdict = f"{STATUS_STYLE.get(r['verdict'], r['verdict'])} ({', '.join(r['reasons']) or '–'})"
        m = r["measured"]
        if m is None:
            t.add_row(r["pair"], verdict, "[dim]not measured[/dim]", "–")
            continue
        after = ", ".join(f"{a:.2f}" for a in m["hard_after"])
        label = "[green]OPD works[/green]" if m["works"] else "[red]OPD fails[/red]"
        outcome = f"{label}: {m['hard_before']:.2f} → {after}, mean Δ {m['delta']:+.3f} (teacher {m['teacher_hard']:.2f})"
        t.add_row(r["pair"], verdict, outcome, "[green]right[/green]" if r["agrees"] else "[red]wrong[/red]")
    stdout.print(t)
    if scorecard and scorecard["pairs"]:
        n = scorecard["pairs"]
        parts = [f"{name} {p['right']}/{n} (balanced accuracy {fmt(p['balanced_accuracy'], 2)})"
                 for name, p in scorecard["predictors"].items()]
        p, rarer = scorecard["predictors"], min(scorecard["working"], n - scorecard["working"])
        lead = p["verdict"]["balanced_accuracy"] > max(p["always warn"]["balanced_accuracy"],
                                                       p["always go"]["balanced_accuracy"])
        # MIN_RARER_OUTCOME pairs of each outcome before a margin counts: a convention, not a measured bar
        enough = rarer >= MIN_RARER_OUTCOME
        stdout.print(f"right on the {n} measured pairs ({scorecard['working']} work): " + "; ".join(parts)
                     + f". The verdict {'leads' if lead else 'does not lead'} the constant predictors on balanced "
                     f"accuracy; with {rarer} pair(s) of the rarer outcome that is "
                     + ("evidence on these pairs only" if enough else "not yet evidence") + " (docs/zoo.md).",
                     highlight=False)


def print_validation_headline(report: dict | None, stdout: Console) -> None:
    """The validation benchmark's held-out numbers (docs/validation.md) under the demo's table: the evidence that
    the verdict predicts OPD outcomes, beside the trivial predictors on the same pairs."""
    card = (report or {}).get("heldout")
    if not card:
        stdout.print("validation benchmark: held-out outcomes not measured yet (docs/validation.md)", highlight=False)
        return
    p = card["predictors"]

    def ba(name):
        m = p.get(name)
        return "–" if m is None else f"{fmt(m['balanced_accuracy'], 2)} [{fmt(m['ba_ci'][0], 2)}, {fmt(m['ba_ci'][1], 2)}]"

    v, rank = p["verdict"], card["ranking"]["verdict score"]
    others = "; ".join(f"{name} {ba(name)}" for name in p if name != "verdict")
    stdout.print(
        f"validation benchmark, held-out family ({card['scored']} pairs: {card['working']} work, "
        f"{card['scored'] - card['working']} fail; pre-registered, docs/validation.md): verdict balanced accuracy "
        f"{ba('verdict')}, AUROC of its score {fmt(v.get('auroc'), 2)}, within-student Spearman "
        f"{fmt(rank['spearman_mean'], 2)}, top-1 regret {fmt(rank['regret_mean'], 3)}; beside it: {others}. "
        f"Small synthetic models; read the limits in docs/validation.md.", highlight=False)


# ------------------------------------------------------------------------------------------------ check
_LEVEL_STYLE = {"ok": "green", "info": "dim", "warn": "yellow", "error": "bold red"}


def print_findings(found, student: str, teachers: list[str], stdout: Console) -> None:
    """`opd-probe check`: one table for the student (and the run), one per teacher; a rendering diff under its
    table."""
    from ..check import worst

    sections = [(f"student {student}", [f for f in found if f.teacher is None])]
    sections += [(f"teacher {t}", [f for f in found if f.teacher == t]) for t in dict.fromkeys(teachers)]
    for title, items in sections:
        level = worst(items)
        table = Table(title=f"{escape(title)}: [{_LEVEL_STYLE[level]}]{level}[/]", title_justify="left",
                      show_lines=False, expand=False)
        for col in ("", "check", "finding", "fix"):
            table.add_column(col, overflow="fold")
        for f in items:
            table.add_row(f"[{_LEVEL_STYLE[f.level]}]{f.level}[/]", f.code, escape(f.message), escape(f.fix or ""))
        stdout.print(table)
        for f in items:
            if f.code == "rendering" and f.details.get("diff"):
                stdout.print("[dim]" + escape("\n".join(f.details["diff"])) + "[/dim]")
    level = worst(found)
    stdout.print(f"[{_LEVEL_STYLE[level]}]{level}[/]: {sum(f.level == 'error' for f in found)} error(s), "
                 f"{sum(f.level == 'warn' for f in found)} warning(s); no weights were loaded")
