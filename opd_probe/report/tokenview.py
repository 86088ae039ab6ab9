"""The HTML report's token view: per teacher, its worst rollouts token by token, shaded by top-k reverse KL, with
the data of the tooltips (each model's top tokens and the sampled token's probability) from scores/<slug>/*.npz.
Layout: docs/reports.md, Reading the token view."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..rundir import OutDir
from ..types import ProbeResults
from .runs import Run
from .view import num

TOP_TOKENS = 5  # tokens.json holds the texts of each model's top-5 ids per state
SCORE_KEYS = ("topk_ids_LK", "topk_logprobs_LK", "sampled_logprob_L")  # what the tooltips show


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
            self.cache[key] = None
            self._load(slug, rid)
        return self.cache[key]

    def _load(self, slug: str, rid: int) -> None:
        try:
            parts = self.out.read_score_parts(slug, rollout=rid)
        except Exception:  # noqa: BLE001 - a damaged part only costs the tooltips of its rollouts
            return
        if not parts:
            return
        first, last, arrays = parts[0]
        ids = [r for r in self.order if first <= r <= last]
        total = sum(self.lengths[r] for r in ids)
        if "topk_ids_LK" not in arrays or arrays["topk_ids_LK"].shape[0] != total:
            return
        start = 0
        for r in ids:
            n = self.lengths[r]
            self.cache[(slug, r)] = {k: arrays[k][start:start + n] for k in SCORE_KEYS if k in arrays}
            start += n


def token_views(run: Run, results: ProbeResults, states, tokens: dict[int, str] | None, names: dict[str, str],
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
        # a teacher with another tokenizer has no top-k KL over the student's ids: its chunk-level sampled KL
        kl_col = "sampled_reverse_kl" if pair.alignment else "topk_reverse_kl"
        per_rollout = df.groupby("rollout_id")[kl_col].mean().sort_values(ascending=False, kind="stable")
        scale = kl_scale(df[kl_col].to_numpy())
        chosen = [int(r) for r in per_rollout.index[:max_rollouts]]
        rollouts = []
        for rid in chosen:
            rows = df[df["rollout_id"] == rid].sort_values("position")
            s = scores.get("student", rid)
            # another tokenizer's top tokens are not the student's ids: tokens.json cannot spell them
            t = None if pair.alignment else scores.get(pair.slug, rid)
            if s is not None and len(s["topk_ids_LK"]) != len(rows):
                s = None
            if t is not None and len(t["topk_ids_LK"]) != len(rows):
                t = None
            view_id = f"{run_key}-t{ti}-r{rid}"
            tok_ids = [int(x) for x in rows["token_id"]]
            kl = [num(x) for x in rows[kl_col]]
            ov = [num(x) for x in rows["overlap_ratio"]]
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
