"""Every Markdown the tool writes: summary.md of a compare run (CI job summaries ($GITHUB_STEP_SUMMARY) and pull
requests), of a select-prompts run, the short summary of a verify run, and `opd-probe report --md`."""

from __future__ import annotations

from typing import Any, Sequence

from ..types import ProbeResults
from .runs import Run
from .verifyview import ARM_HEADERS, COLD_START_HEADERS, COMPARISON_HEADERS, LEGACY_HEADERS, verify_view
from .view import (SELECTION_COLUMNS, SELECTION_SETS, TEMPLATE_METRICS, fmt, plan_rows, plan_title, selection_cells,
                   selection_deltas, selection_headline, short_names, template_summary)

STATUS_ICON = {"go": "✅ GO", "caution": "⚠️ CAUTION", "no-go": "⛔ NO-GO"}


def _md(text: Any) -> str:
    """Escape what would break a Markdown table cell or inject markup."""
    return (str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
            .replace("\n", " "))


def summary_markdown(results: ProbeResults) -> str:
    ro = results.rollouts
    names = short_names(list(results.ranking))
    lines = [
        "## opd-probe: will OPD work?",
        "",
        f"Student `{_md(results.student.get('path'))}` · {ro['prompts']} prompts × {ro['samples_per_prompt']} samples · "
        f"{ro['states']} states · k={results.config['top_k']} · opd-probe {results.tool_version}",
        "",
    ]
    gate = results.gate
    if gate is not None:
        lines += [f"**Gate: {'PASSED' if gate['passed'] else 'FAILED'}** (fails on: {', '.join(gate['fail_on'])})", ""]
    lines += [
        "| # | teacher | verdict | overlap ratio | mass (student) | entropy gap | top-k KL (nats/token) | reasons |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by = {p.teacher: p for p in results.pairs}
    for rank, name in enumerate(results.ranking, 1):
        p = by[name]
        v = p.verdict
        e = p.pooled

        def cell(metric: str) -> str:
            return ("≈" if metric in p.approximate else "") + fmt(e[metric].mean)

        reasons = "; ".join(
            f"{r.code}: {r.metric} {fmt(r.value)} {r.direction} {fmt(r.threshold)}"
            if r.value is not None else r.code for r in v.reasons) or "–"
        lines.append(
            f"| {rank} | `{_md(names[name])}` | {STATUS_ICON[v.status]} | {fmt(e['overlap_ratio'].mean)} "
            f"[{fmt(e['overlap_ratio'].ci_low, 2)}, {fmt(e['overlap_ratio'].ci_high, 2)}] | "
            f"{cell('overlap_mass_student')} | {cell('entropy_gap')} | {cell('topk_reverse_kl')} | "
            f"{_md(reasons)} |")
    recs = [(names[n], r) for n in results.ranking for r in by[n].verdict.recommendations]
    if recs:
        lines += ["", "### Recommendations", ""]
        lines += [f"- `{_md(n)}`: {_md(r)}" for n, r in recs]
    lint = [(names[n], w) for n in results.ranking for w in by[n].warnings if w.startswith("lint: ")]
    if lint:  # one line per pair where compare's lint found something off (docs/lint.md)
        lines += ["", "### Lint", ""] + [f"- `{_md(n)}`: {_md(w[len('lint: '):])}" for n, w in lint]
    aligned = [(names[n], by[n]) for n in results.ranking if by[n].alignment]
    if aligned:  # another tokenizer (or --alignment text): the chunk-level figures its verdict reads
        lines += ["", "### Read through text alignment (docs/cross-tokenizer.md)", ""]
        lines += [f"- `{_md(n)}`: aligned {fmt(p.alignment.get('aligned_share'), 2)} of the student's positions, "
                  f"{p.alignment.get('chunks')} chunks; chunk KL {fmt(p.pooled['sampled_reverse_kl'].mean)} "
                  f"nats/token; unsupported chunks {fmt(p.pooled['chunk_unsupported'].mean)}" for n, p in aligned]
    lines += template_markdown(results)
    if results.plan:
        lines += plan_markdown(results.plan)
    approx: dict[tuple, list[str]] = {}  # (teacher, exact share, how) -> metrics: one line per kind of estimate
    for n in results.ranking:
        for m, a in by[n].approximate.items():
            approx.setdefault((names[n], a.get("exact_fraction"), a["how"]), []).append(m)
    if approx:
        lines += ["", "### Approximate values (≈)", ""]
        lines += [f"- `{_md(n)}` {', '.join(ms)}: exact at {share:.0%} of states; {_md(how)}"
                  if share is not None else f"- `{_md(n)}` {', '.join(ms)}: {_md(how)}"
                  for (n, share, how), ms in approx.items()]
    lines += ["", "Thresholds: checked on the model zoo where it could test them, provisional elsewhere; see "
              "docs/metrics.md and docs/zoo.md.", ""]
    return "\n".join(lines)


def _code_block(text: str) -> list[str]:
    fence = "~~~~" if "```" in text else "```"
    return [fence + "text", text.rstrip("\n"), fence]


def template_markdown(results: ProbeResults) -> list[str]:
    """The student's vs the teacher's own template, per teacher that was compared (compare --template)."""
    names = short_names([p.teacher for p in results.pairs])
    out: list[str] = []
    for p in results.pairs:
        if not p.templates:
            continue
        s = template_summary(p.templates)
        out += ["", f"### Chat templates: `{_md(names[p.teacher])}`", ""]
        if s["unavailable"]:
            out += [_md(s["unavailable"])]
            continue
        if s["rows"]:
            out += ["| rendering | " + " | ".join(c.label for c in TEMPLATE_METRICS) + " |",
                    "|---|" + "---|" * len(TEMPLATE_METRICS)]
            out += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in s["rows"]]
            out += ["", f"Teacher minus student rendering (same states): {_md('; '.join(s['delta']))}.", "",
                    f"**Recommended: the {s['recommended']}'s template.** {_md(s['reason'])}."]
        if s["identical"]:
            out += ["", "Both templates render every probe prompt to the same token ids."]
        if s["differences"]:
            out += [""] + [f"- {_md(d)}" for d in s["differences"]]
        ex = s["example"]
        if ex and not s["identical"]:
            out += ["", f"Prompt `{_md(ex['prompt_id'])}` rendered by the student's template "
                        f"({_md(s['student_rendering'])}):", ""] + _code_block(ex["student"])
            out += ["", "and by the teacher's template:", ""] + _code_block(ex["teacher"])
    return out


def plan_markdown(plan) -> list[str]:
    out = ["", "### Cost of the planned OPD run", "", _md(plan_title(plan)) + ".", "",
           "| | tokens (low – high) | measured here | time (low – high) |", "|---|---|---|---|"]
    out += [f"| {' | '.join(_md(c) for c in row)} |" for row in plan_rows(plan)]
    out += ["", "Assumptions:", ""] + [f"- {_md(a)}" for a in plan.assumptions]
    return out


def selection_markdown(doc: dict) -> str:
    """summary.md of a select-prompts run: how the kept set differs from the pool."""
    cfg = doc["config"]
    heads = [c.header(short=True, arrow=False).replace("\n", " ") for c in SELECTION_COLUMNS]
    lines = [
        "## opd-probe select-prompts",
        "",
        f"Student `{_md(cfg['student'])}` ← teacher `{_md(cfg['teacher'])}` · pool `{_md(doc['pool']['source'])}` "
        f"({doc['pool']['count']} prompts × {cfg['probe_samples']} samples, k={cfg['top_k']}) · "
        f"opd-probe {doc['tool_version']}",
        "",
        _md(selection_headline(doc)) + ".",
        "",
        "| set | prompts | " + " | ".join(heads) + " |",
        "|---|---|" + "---|" * len(heads),
    ]
    for key, label in SELECTION_SETS.items():
        row = doc["summary"][key]
        lines.append(f"| {label} | {row['prompts']} | " + " | ".join(selection_cells(row)) + " |")
    lines += ["", _md(selection_deltas(doc)) + ".", ""]
    lines += [f"- warning: {_md(w)}" for w in doc.get("warnings", [])]
    lines.append("")
    return "\n".join(lines)


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return (["| " + " | ".join(_md(h) for h in headers) + " |", "|" + "---|" * len(headers)]
            + ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows])


VERDICT_ICON = {"go": "✅", "caution": "⚠️", "no-go": "⛔"}


def verify_markdown(run: Run) -> str:
    """A verify run: the verdict first (reasons, power), the arms, the paired comparisons, the prediction beside
    the outcome, the cold start, trends and notes (report/verifyview.py)."""
    v = verify_view(run.verify)
    lines = [f"## opd-probe verify: `{_md(v.student)}` ← `{_md(v.teacher)}`", "",
             f"**{VERDICT_ICON[v.tone]} Verdict: {_md(v.verdict)}** ({_md(v.gate)})", ""]
    lines += [f"- {_md(r)}" for r in v.reasons]
    if v.power:
        lines.append(f"- {_md(v.power)}")
    if v.prediction_line:
        lines += ["", f"Probe predicted {STATUS_ICON[v.prediction_status]} {_md(v.prediction_line)}."]
    lines += ["", _md(v.settings) + "."]
    if v.legacy:
        lines += [""] + _md_table(LEGACY_HEADERS, v.legacy_rows)
    if v.arm_rows:
        lines += ["", "### Arms", ""] + _md_table(ARM_HEADERS, v.arm_rows) + ["", _md(v.arm_caption) + "."]
    if v.comparison_rows:
        lines += ["", "### Paired comparisons (95% CI over problems and seeds)", ""]
        lines += _md_table(COMPARISON_HEADERS, v.comparison_rows)
        if v.seed_note:
            lines += ["", _md(v.seed_note) + "."]
    if v.cold_start_rows:
        lines += ["", "### Cold start", "", _md(v.cold_start) + ".", ""]
        lines += _md_table(COLD_START_HEADERS, v.cold_start_rows)
    lines += ["", f"Probe at step 0 (first teacher batch, before any update): {_md(v.step0)}."]
    if v.trends:
        lines += ["", _md(v.trends) + "."]
    lines += [""] + [f"- note: {_md(n)}" for n in v.notes]
    lines.append("")
    return "\n".join(lines)


def report_markdown(runs: Sequence[Run]) -> str:
    """summary_markdown for each compare run, a short summary for each verify run; labelled when several."""
    parts = []
    for r in runs:
        body = (summary_markdown(r.results) if r.kind == "compare" else
                selection_markdown(r.selection) if r.kind == "select" else verify_markdown(r))
        if len(runs) > 1:
            body = f"**Run `{_md(r.label)}`**\n\n" + body
        parts.append(body)
    return "\n".join(parts)
