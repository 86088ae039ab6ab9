"""summary.md: the verdicts as Markdown, for CI job summaries ($GITHUB_STEP_SUMMARY) and pull requests."""

from __future__ import annotations

from ..types import ProbeResults
from .console import short_names

STATUS_ICON = {"go": "✅ GO", "caution": "⚠️ CAUTION", "no-go": "⛔ NO-GO"}


def _f(x, d=3) -> str:
    return "–" if x is None or x != x else f"{x:.{d}f}"


def _md(text: str) -> str:
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
            return ("≈" if metric in p.approximate else "") + _f(e[metric].mean)

        reasons = "; ".join(
            f"{r.code}: {r.metric} {_f(r.value)} {r.direction} {_f(r.threshold)}"
            if r.value is not None else r.code for r in v.reasons) or "–"
        lines.append(
            f"| {rank} | `{_md(names[name])}` | {STATUS_ICON[v.status]} | {_f(e['overlap_ratio'].mean)} "
            f"[{_f(e['overlap_ratio'].ci_low, 2)}, {_f(e['overlap_ratio'].ci_high, 2)}] | "
            f"{cell('overlap_mass_student')} | {cell('entropy_gap')} | {cell('topk_reverse_kl')} | "
            f"{_md(reasons)} |")
    recs = [(names[n], r) for n in results.ranking for r in by[n].verdict.recommendations]
    if recs:
        lines += ["", "### Recommendations", ""]
        lines += [f"- `{_md(n)}`: {_md(r)}" for n, r in recs]
    lines += template_markdown(results)
    if results.plan:
        lines += plan_markdown(results.plan)
    approx = [(names[n], m, a) for n in results.ranking for m, a in by[n].approximate.items()]
    if approx:
        lines += ["", "### Approximate values (≈)", ""]
        lines += [f"- `{_md(n)}` {m}: exact at {a['exact_fraction']:.0%} of states; {_md(a['how'])}"
                  if a.get("exact_fraction") is not None else f"- `{_md(n)}` {m}: {_md(a['how'])}"
                  for n, m, a in approx]
    lines += ["", "Thresholds: checked on the model zoo where it could test them, provisional elsewhere; see "
              "docs/metrics.md and docs/zoo.md.", ""]
    return "\n".join(lines)


def _code_block(text: str) -> list[str]:
    fence = "~~~~" if "```" in text else "```"
    return [fence + "text", text.rstrip("\n"), fence]


def template_markdown(results: ProbeResults) -> list[str]:
    """The student's vs the teacher's own template, per teacher that was compared (compare --template)."""
    from .console import TEMPLATE_METRICS, template_summary

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
            out += ["| rendering | " + " | ".join(label for _, label, _ in TEMPLATE_METRICS) + " |",
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
    from .console import plan_rows, plan_title

    out = ["", "### Cost of the planned OPD run", "", _md(plan_title(plan)) + ".", "",
           "| | tokens (low – high) | measured here | time (low – high) |", "|---|---|---|---|"]
    out += [f"| {' | '.join(_md(c) for c in row)} |" for row in plan_rows(plan)]
    out += ["", "Assumptions:", ""] + [f"- {_md(a)}" for a in plan.assumptions]
    return out


def selection_markdown(doc: dict) -> str:
    """summary.md of a select-prompts run: how the kept set differs from the pool."""
    from .console import SELECTION_COLUMNS, selection_deltas, selection_headline

    cfg = doc["config"]
    heads = [h.replace("\n", " ") for _, h, _ in SELECTION_COLUMNS]
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
    for key, label in (("pool", "pool (scored)"), ("kept", "kept"), ("aligned", "aligned"),
                       ("ood", "out-of-distribution")):
        row = doc["summary"][key]
        lines.append(f"| {label} | {row['prompts']} | " + " | ".join(_f(row.get(m), d) for m, _, d in SELECTION_COLUMNS)
                     + " |")
    lines += ["", _md(selection_deltas(doc)) + ".", ""]
    lines += [f"- warning: {_md(w)}" for w in doc.get("warnings", [])]
    lines.append("")
    return "\n".join(lines)
