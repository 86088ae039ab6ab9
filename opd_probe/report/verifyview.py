"""What every report format shows of a verify run (verify.json), as plain strings and rows; console.py,
markdown.py and html.py render them. No rich, no IO; every number goes through ``view.fmt`` / ``view.interval``.

A verify run written since verify became a controlled experiment (``experiment`` in verify.json) shows: the
verdict with its reasons (and the power estimate when inconclusive), one row per arm (the untouched student, the
teacher arm, the control arm, the teacher model itself) with target and retention accuracy over seeds and gap
recovery, the paired comparisons with their 95% intervals, the probe's prediction beside the outcome, the cold
start's format share, the descriptive trends and the run's notes (docs/verify.md).

An older verify.json (schema 1: one seed, no arms, an outcome from trends) is shown as it was recorded, its
criteria table and outcome, with a note that it predates the controlled experiment and how to get one.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import experiment as ex
from .view import criterion, fmt, interval

TONES = {ex.ADDS_SIGNAL: "go", ex.INCONCLUSIVE: "caution", ex.GAIN_UNATTRIBUTED: "caution",
         ex.NO_BETTER: "no-go", ex.HARMFUL: "no-go", ex.NO_GAIN: "no-go"}
ARM_ORDER = (("baseline", "untouched student (baseline)"), ("teacher", "teacher arm (OPD)"),
             ("control", "control arm (no teacher)"))
COMPARISONS = (("teacher_vs_control", "teacher − control"), ("teacher_vs_baseline", "teacher − baseline"),
               ("control_vs_baseline", "control − baseline"),
               ("retention_teacher_vs_baseline", "retention change: teacher − baseline"),
               ("retention_control_vs_baseline", "retention change: control − baseline"))
ARM_HEADERS = ("arm", "seeds", "target accuracy [95% CI]", "per seed", "retention accuracy [95% CI]",
               "gap recovery")
COMPARISON_HEADERS = ("comparison (paired per problem)", "mean [95% CI]", "per seed", "evidence")
COLD_START_HEADERS = ("arm-seed", "format share before → after", "target", "reached", "epochs", "rollouts",
                      "overlap before → after", "mass before → after")
LEGACY_HEADERS = ("criterion", "first steps", "last steps", "result")
LEGACY_NOTE = ("This verify.json predates verify's controlled experiment (schema 1): one seed, no control arm, no "
               "intervals or retention; its outcome came from trends and held-out accuracy against a noise "
               "estimate. Re-run `opd-probe verify ... --control --seeds 3` for arms, intervals and a verdict.")


@dataclass(frozen=True)
class VerifyView:
    """Display strings of one verify run. ``legacy``: an old verify.json, shown by ``legacy_rows`` and ``verdict``
    (its recorded outcome); the arm, comparison and cold-start rows are then empty."""

    legacy: bool
    student: str
    teacher: str
    settings: str
    verdict: str
    tone: str  # "go" | "caution" | "no-go" (the colour of the verdict)
    passed: bool
    gate: str
    reasons: tuple[str, ...]
    power: str | None
    arm_rows: tuple[tuple[str, ...], ...]
    arm_caption: str
    comparison_rows: tuple[tuple[str, ...], ...]
    seed_note: str | None
    prediction_status: str | None
    prediction_codes: str
    prediction_k: str
    step0: str
    cold_start_rows: tuple[tuple[str, ...], ...]
    cold_start: str | None  # one line: did the cold start reach its format-share target
    trends: str | None
    teacher_accuracy: str | None
    notes: tuple[str, ...]
    legacy_rows: tuple[tuple[str, ...], ...] = ()

    @property
    def verdict_line(self) -> str:
        return f"verdict: {self.verdict} ({self.gate})"

    @property
    def prediction_line(self) -> str | None:
        """The probe's prediction beside the outcome; the status key stays for each format to decorate."""
        if self.prediction_status is None:
            return None
        return (f"({self.prediction_codes}) at k={self.prediction_k}, from the first teacher batch before any "
                f"update; observed: {self.verdict}")


# ------------------------------------------------------------------------------------------------ rows
def _last(points: list) -> dict:
    return points[-1] if points else {}


def _arm_rows(exp: dict, doc: dict) -> tuple[tuple[str, ...], ...]:
    """One row per arm: accuracy on the target and retention sets at the last evaluation, mean over seeds with its
    t-interval over seeds (experiment.curves), the per-seed values and the gap recovery (experiment.gap_recovery)."""
    curves, acc, gap = exp.get("curves") or {}, exp.get("accuracy") or {}, exp.get("gap_recovery") or {}
    n_seeds = {arm: len((doc.get("arms") or {}).get(arm) or []) for arm in ("teacher", "control")}
    before_retain = _first_point(curves, "retain")
    if acc.get("baseline") is None and not before_retain:
        return ()  # no --eval-prompts and no --retain-prompts: no accuracy to show
    rows = []
    for arm, label in ARM_ORDER:
        if arm == "baseline":
            rows.append((label, "evaluated once", fmt(acc.get("baseline")), "", fmt(before_retain.get("mean")), ""))
            continue
        if not n_seeds[arm]:
            continue
        t, r = _last(curves.get(arm, {}).get("target", [])), _last(curves.get(arm, {}).get("retain", []))
        rows.append((label, str(n_seeds[arm]), interval(t.get("mean", acc.get(arm)), t.get("low"), t.get("high")),
                     ", ".join(fmt(x) for x in t.get("per_seed", ())), interval(r.get("mean"), r.get("low"),
                                                                               r.get("high")),
                     fmt(gap.get(arm), 2)))
    if acc.get("teacher_model") is not None:
        rows.append(("teacher model (reference)", "evaluated once", fmt(acc["teacher_model"]), "", "–", ""))
    return tuple(rows)


def _first_point(curves: dict, which: str) -> dict:
    for arm in ("teacher", "control"):
        points = (curves.get(arm) or {}).get(which) or []
        if points and points[0].get("phase") == "before":
            return points[0]
    return {}


def _comparison_rows(exp: dict) -> tuple[tuple[tuple[str, ...], ...], str | None]:
    """The paired intervals of experiment.intervals that were measured, and a note when seed variance was not."""
    rows, one_seed = [], False
    for key, label in COMPARISONS:
        iv = (exp.get("intervals") or {}).get(key)
        if iv is None:
            continue
        one_seed = one_seed or iv.get("se_seed") is None
        rows.append((label, interval(iv["mean"], iv["low"], iv["high"], sign=True),
                     ", ".join(fmt(d, sign=True) for d in iv.get("per_seed", ())),
                     f"{iv['problems']} problems × {iv['seeds']} seed(s)"))
    note = ("one seed: the intervals are paired t-intervals over problems only, seed variance was not measured "
            "(run --seeds 3 for a decision)") if one_seed else None
    return tuple(rows), note


def _cold_start_rows(doc: dict) -> tuple[tuple[str, ...], ...]:
    rows = []
    for arm in ("teacher", "control"):
        for rec in (doc.get("arms") or {}).get(arm) or []:
            cs = rec.get("cold_start")
            if not cs:
                continue
            b, a = cs.get("before") or {}, cs.get("after") or {}
            rows.append((f"{arm} seed {rec.get('seed')}", f"{fmt(b.get('share'), 2)} → {fmt(a.get('share'), 2)}",
                         fmt(cs.get("target"), 2), "yes" if cs.get("reached") else "no",
                         f"{cs.get('epochs_run')} of {cs.get('epochs_max')}", str(cs.get("rollouts")),
                         f"{fmt(b.get('overlap_ratio'))} → {fmt(a.get('overlap_ratio'))}",
                         f"{fmt(b.get('overlap_mass_student'))} → {fmt(a.get('overlap_mass_student'))}"))
    return tuple(rows)


def _cold_start_line(doc: dict) -> str | None:
    recs = [r["cold_start"] for arm in ("teacher", "control") for r in (doc.get("arms") or {}).get(arm) or []
            if r.get("cold_start")]
    if not recs:
        return None
    reached = sum(bool(cs.get("reached")) for cs in recs)
    b = [cs["before"]["share"] for cs in recs]
    a = [cs["after"]["share"] for cs in recs]

    def span(values):  # one value, or the range over arm-seeds
        lo, hi = fmt(min(values), 2), fmt(max(values), 2)
        return lo if lo == hi else f"{lo}–{hi}"

    share = f"{span(b)} → {span(a)}"
    r0 = recs[0]
    rule = (f"at most {fmt(r0['unsupported_bar'], 2)} of its states are unsupported by the teacher"
            if "unsupported_bar" in r0 else f"its overlap mass is at least {fmt(r0.get('mass_bar'), 2)}")  # older runs
    return (f"cold start {'reached' if reached == len(recs) else 'did not reach'} its target: format share {share} "
            f"(target {fmt(r0.get('target'), 2)}; reached in {reached} of {len(recs)} arm-seed(s); a sample "
            f"follows the teacher's format when {rule})")


def _trends(c: dict) -> str | None:
    if "overlap_first" not in c:
        return None
    return (f"trends of the first teacher seed (descriptive: they decide nothing), first vs last "
            f"{c.get('window_steps')} step(s): overlap ratio {fmt(c['overlap_first'])} → {fmt(c['overlap_last'])}"
            f"{' (k = vocabulary: 1 by construction)' if c.get('overlap_rises') is None else ''}, top-k KL "
            f"{fmt(c.get('kl_first'))} → {fmt(c.get('kl_last'))}")


def _step0(s0: dict) -> str:
    parts = [(k, label) for k, label in (("overlap_ratio", "overlap"), ("overlap_mass_student", "mass"),
                                         ("entropy_gap", "entropy gap"), ("topk_reverse_kl", "top-k KL")) if k in s0]
    out = ", ".join(f"{label} {fmt(s0[k])}" for k, label in parts)
    if "grad_norm" in s0:
        out += f", grad norm {fmt(s0['grad_norm'], general=True)}"
    return out


def _settings(doc: dict, exp: dict) -> str:
    cfg = doc.get("config") or {}
    evidence = exp.get("evidence") or {}
    parts = [f"{cfg.get('steps')} OPD steps × {cfg.get('seeds', 1)} seed(s) per arm",
             f"loss {cfg.get('loss')}, k={cfg.get('top_k')}, lr {fmt(cfg.get('lr'), 3, general=True)}",
             f"{cfg.get('batch_prompts')} prompts × {cfg.get('samples')} samples per step"]
    if not exp:
        return " · ".join(parts)
    retain = len((((doc.get("arms") or {}).get("baseline") or {}).get("retain") or {}).get("pass1") or [])
    parts.append(f"{exp.get('metric')} on {evidence.get('problems')} eval problems"
                 + (f" and {retain} retention problems" if retain else ""))
    if cfg.get("cold_start"):
        parts.append(f"cold start on {cfg['cold_start']} teacher rollouts")
    bar = (exp.get("decision") or {}).get("bar")
    if bar:
        parts.append(f"bar (--min-gain) {fmt(bar)}")
    return " · ".join(parts)


# ------------------------------------------------------------------------------------------------ the view
def _prediction(doc: dict) -> tuple[str | None, str, str]:
    p = doc.get("prediction")
    if not p:
        return None, "", ""
    codes = ", ".join(sorted({r["code"] for r in p.get("reasons", [])})) or "no reasons"
    return p.get("status"), codes, str((doc.get("step0") or {}).get("top_k", (doc.get("config") or {}).get("top_k")))


def _legacy_rows(c: dict) -> tuple[tuple[str, ...], ...]:
    rows = [("overlap ratio rises", fmt(c.get("overlap_first")), fmt(c.get("overlap_last")),
             "n/a (k = vocabulary)" if c.get("overlap_rises") is None else criterion(c.get("overlap_rises"))),
            ("top-k reverse KL falls", fmt(c.get("kl_first")), fmt(c.get("kl_last")), criterion(c.get("kl_falls")))]
    if "accuracy" in c:
        rows.append((f"held-out accuracy (noise ±{fmt(c.get('accuracy_noise'))})", fmt(c.get("accuracy_start")),
                     fmt(c.get("accuracy_end")), str(c["accuracy"])))
    return tuple(rows)


def verify_view(doc: dict) -> VerifyView:
    """The view of one verify.json document (a dict; ``VerifyResult.to_dict()`` or the file as read)."""
    cfg, c, exp = doc.get("config") or {}, doc.get("criteria") or {}, doc.get("experiment") or {}
    status, codes, k = _prediction(doc)
    ta = doc.get("teacher_accuracy")
    common = dict(student=str(cfg.get("student")), teacher=str(cfg.get("teacher")),
                  settings=_settings(doc, exp), prediction_status=status, prediction_codes=codes, prediction_k=k,
                  step0=_step0(doc.get("step0") or {}), notes=tuple(doc.get("notes") or ()) + tuple(
                      f"warning: {w}" for w in c.get("warnings", ())),
                  teacher_accuracy=None if not ta else fmt(ta.get("accuracy")))
    if not exp:
        passed = bool(c.get("passed"))
        return VerifyView(legacy=True, verdict=str(doc.get("outcome")), tone="go" if passed else "no-go",
                          passed=passed, gate=f"success criteria {'PASSED' if passed else 'FAILED'}",
                          reasons=(LEGACY_NOTE,), power=None, arm_rows=(), arm_caption="", comparison_rows=(),
                          seed_note=None, cold_start_rows=(), cold_start=None, trends=None, legacy_rows=_legacy_rows(c), **common)
    d = exp.get("decision") or {}
    verdict = d.get("verdict", str(doc.get("outcome")))
    comparisons, seed_note = _comparison_rows(exp)
    power = (d.get("power") or {}).get("note") if verdict == ex.INCONCLUSIVE else None
    return VerifyView(legacy=False, verdict=verdict, tone=TONES.get(verdict, "caution"), passed=bool(d.get("passed")),
                      gate="passes --gate" if d.get("passed") else "--gate exits 1: only 'teacher adds signal' passes",
                      reasons=tuple(d.get("reasons") or ()), power=power and f"power: {power}",
                      arm_rows=_arm_rows(exp, doc), comparison_rows=comparisons, seed_note=seed_note,
                      arm_caption=(f"{exp.get('metric')} at the last evaluation: mean over seeds, its t-interval "
                                   "over seeds, each seed's value; gap recovery (after − before) / (teacher − "
                                   "before)"),
                      cold_start_rows=_cold_start_rows(doc), cold_start=_cold_start_line(doc), trends=_trends(c),
                      **common)


# ------------------------------------------------------------------------------------------------ curves
def curve_panels(doc: dict) -> list[dict]:
    """The plot's data: one panel per measured set (target, retention), one series per arm over OPD steps (the
    mean over seeds and its t-interval over seeds, experiment.curves), with the untouched student and the teacher
    model as reference lines. An arm without a cold start starts from the untouched student at step 0."""
    exp = doc.get("experiment") or {}
    curves, acc = exp.get("curves") or {}, exp.get("accuracy") or {}
    panels = []
    for which, title in (("target", f"target accuracy ({exp.get('metric')})"), ("retain", "retention accuracy")):
        series, base = [], None
        for arm, label in ARM_ORDER[1:]:
            points = (curves.get(arm) or {}).get(which) or []
            before = [p for p in points if p["phase"] == "before"]
            base = before[0]["mean"] if before else base
            after = [p for p in points if p["phase"] != "before"]
            if not any(p["phase"] == "cold-start" for p in after):
                after = before + after
            if after:
                series.append({"name": label, "x": [p["step"] for p in after], "mean": [p["mean"] for p in after],
                               "low": [p["low"] for p in after], "high": [p["high"] for p in after]})
        if not series:
            continue
        refs = [("untouched student", base)] + ([("teacher model", acc["teacher_model"])]
                                                if which == "target" and acc.get("teacher_model") is not None else [])
        panels.append({"title": title, "series": series, "refs": [(n, y) for n, y in refs if y is not None]})
    return panels
