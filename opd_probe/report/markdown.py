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
        v = p.verdict or {"status": "go", "reasons": [], "recommendations": []}
        e = p.pooled

        def cell(metric: str) -> str:
            return ("≈" if metric in p.approximate else "") + _f(e[metric].mean)

        reasons = "; ".join(
            f"{r['code']}: {r['metric']} {_f(r['value'])} {r['direction']} {_f(r['threshold'])}"
            if r["value"] is not None else r["code"] for r in v["reasons"]) or "–"
        lines.append(
            f"| {rank} | `{_md(names[name])}` | {STATUS_ICON[v['status']]} | {_f(e['overlap_ratio'].mean)} "
            f"[{_f(e['overlap_ratio'].ci_low, 2)}, {_f(e['overlap_ratio'].ci_high, 2)}] | "
            f"{cell('overlap_mass_student')} | {cell('entropy_gap')} | {cell('topk_reverse_kl')} | "
            f"{_md(reasons)} |")
    recs = [(names[n], r) for n in results.ranking for r in (by[n].verdict or {}).get("recommendations", [])]
    if recs:
        lines += ["", "### Recommendations", ""]
        lines += [f"- `{_md(n)}`: {_md(r)}" for n, r in recs]
    approx = [(names[n], m, a) for n in results.ranking for m, a in by[n].approximate.items()]
    if approx:
        lines += ["", "### Approximate values (≈)", ""]
        lines += [f"- `{_md(n)}` {m}: exact at {a['exact_fraction']:.0%} of states; {_md(a['how'])}"
                  if a.get("exact_fraction") is not None else f"- `{_md(n)}` {m}: {_md(a['how'])}"
                  for n, m, a in approx]
    lines += ["", "Thresholds are provisional until calibrated on the model zoo; see docs/metrics.md.", ""]
    return "\n".join(lines)
