"""Pure math on arrays: per-state OPD compatibility metrics and their aggregation.

No models, no IO, no torch. Every quantity is computed at student-visited states (the response positions of the
student's own samples), in nats. Definitions follow docs/metrics.md and the paper (arXiv 2604.13016, section 2.3
and appendix B.1); where the paper's reference code differs, the paper's formula is used.

Shapes: N = number of states (response positions, all rollouts concatenated), K = top-k size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# name -> (short description, higher_is_better). The order is the order of console/report columns.
METRICS: dict[str, tuple[str, bool | None]] = {
    "overlap_ratio": ("mean |TopK(p) ∩ TopK(q)| / k", True),
    "overlap_mass_student": ("mean student probability mass on the shared top-k tokens", True),
    "overlap_mass_teacher": ("mean teacher probability mass on the shared top-k tokens", True),
    "entropy_gap": ("mean |H(q) - H(p)|, nats", False),
    "entropy_gap_signed": ("mean H(q) - H(p), nats", None),
    "overlap_token_advantage": ("mean over shared tokens of p̄(log q̄ - log p̄) / |I|, nats (<= 0)", True),
    "support_mass": ("mean min(1, Q(TopK(p)) / P(TopK(p))): teacher mass on the student's top-k, relative", True),
    "unsupported": ("share of states with support mass < 0.05: the teacher rules out what the student does", False),
    "topk_reverse_kl": ("mean Σ_{v∈TopK(p)} p̃(v)(log p(v) - log q(v)), nats/token", None),
    "sampled_reverse_kl": ("mean log p(ŷ) - log q(ŷ), nats/token", None),
    "topk_coverage_student": ("mean Σ_{v∈TopK(p)} p(v)", None),
    "topk_coverage_teacher": ("mean Σ_{v∈TopK(q)} q(v)", None),
    "top1_agreement": ("mean 1[argmax p = argmax q]", True),
    "student_entropy": ("mean H(p), nats", None),
    "teacher_entropy": ("mean H(q), nats", None),
}


# A state is "unsupported" when the teacher gives the student's top-k under 5% of the mass the student gives it: the
# teacher rules out what the student does there (docs/validation.md). The per-state line is a convention, not
# tuned: the share it yields separated every measured pair with a wide gap (max 0.007 where OPD was not wrecked,
# 0.30 and 0.74 where it was; the share under 0.01 gives the same picture).
UNSUPPORTED_SUPPORT = 0.05


def per_state_metrics(
    student_topk_ids_NK: np.ndarray,
    student_topk_logprobs_NK: np.ndarray,
    student_entropy_N: np.ndarray,
    student_sampled_logprob_N: np.ndarray,
    teacher_topk_ids_NK: np.ndarray,
    teacher_topk_logprobs_NK: np.ndarray,
    teacher_entropy_N: np.ndarray,
    teacher_query_logprobs_NK: np.ndarray,
    teacher_sampled_logprob_N: np.ndarray,
) -> dict[str, np.ndarray]:
    """Every metric of ``METRICS`` at every state, shape (N,) each.

    All log-probs are full-vocabulary log-softmax values at temperature 1. ``teacher_query_logprobs_NK`` holds
    log q_t(v) for v = the student's top-k ids (same column order as ``student_topk_ids_NK``).
    ``overlap_token_advantage`` is NaN at states whose intersection is empty (it is undefined there; the paper's
    mean runs over states with a non-empty intersection). Everything else is finite.
    """
    s_ids = np.asarray(student_topk_ids_NK)
    t_ids = np.asarray(teacher_topk_ids_NK)
    s_lp = np.asarray(student_topk_logprobs_NK, dtype=np.float64)
    t_lp = np.asarray(teacher_topk_logprobs_NK, dtype=np.float64)
    q_at_s = np.asarray(teacher_query_logprobs_NK, dtype=np.float64)
    h_p = np.asarray(student_entropy_N, dtype=np.float64)
    h_q = np.asarray(teacher_entropy_N, dtype=np.float64)
    n, k = s_ids.shape
    if t_ids.shape != (n, k) or s_lp.shape != (n, k) or q_at_s.shape != (n, k) or t_lp.shape != (n, k):
        raise ValueError(f"top-k arrays must all be (N, K)=({n}, {k})")

    # in_teacher_NK[t, j]: the student's j-th top-k token is also in the teacher's top-k.
    in_teacher_NK = (s_ids[:, :, None] == t_ids[:, None, :]).any(axis=-1)
    count_N = in_teacher_NK.sum(axis=1)
    p_NK = np.exp(s_lp)
    q_NK = np.exp(q_at_s)
    mass_p_N = np.where(in_teacher_NK, p_NK, 0.0).sum(axis=1)
    mass_q_N = np.where(in_teacher_NK, q_NK, 0.0).sum(axis=1)

    # Overlap-token advantage (paper eq. 7): renormalise p and q on the intersection I_t, then
    # (1/|I_t|) Σ_{v∈I_t} p̄(v) (log q̄(v) - log p̄(v)) = -KL(p̄ || q̄) / |I_t|.
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pbar = s_lp - np.log(mass_p_N)[:, None]
        log_qbar = q_at_s - np.log(mass_q_N)[:, None]
        terms = np.where(in_teacher_NK, np.exp(log_pbar) * (log_qbar - log_pbar), 0.0)
        adv_N = np.where(count_N > 0, terms.sum(axis=1) / np.maximum(count_N, 1), np.nan)

    # Top-k reverse KL (the reference trainer's step-0 loss): student top-k, weights = p renormalised on the
    # student's top-k, full-vocabulary log-probs inside the log ratio (the reference trainer thunlp/OPD's student_p reward; docs/metrics.md).
    coverage_p_N = p_NK.sum(axis=1)
    ptilde_NK = p_NK / coverage_p_N[:, None]
    kl_topk_N = (ptilde_NK * (s_lp - q_at_s)).sum(axis=1)
    # Support mass (docs/metrics.md): how much of what the student puts on its own top-k the teacher puts there too.
    # Unlike the overlap ratio and masses it does not depend on which of several near-equal tokens made each top-k
    # (a student spread evenly over 32 synonyms, k = 16: a same-format teacher scores 1, the overlap mass ~0.25).
    support_N = np.minimum(1.0, q_NK.sum(axis=1) / coverage_p_N)
    unsupported_N = (support_N < UNSUPPORTED_SUPPORT).astype(np.float64)

    return {
        "overlap_ratio": count_N / k,
        "overlap_mass_student": mass_p_N,
        "overlap_mass_teacher": mass_q_N,
        "entropy_gap": np.abs(h_q - h_p),
        "entropy_gap_signed": h_q - h_p,
        "overlap_token_advantage": adv_N,
        "support_mass": support_N,
        "unsupported": unsupported_N,
        "topk_reverse_kl": kl_topk_N,
        "sampled_reverse_kl": np.asarray(student_sampled_logprob_N, np.float64)
        - np.asarray(teacher_sampled_logprob_N, np.float64),
        "topk_coverage_student": coverage_p_N,
        "topk_coverage_teacher": np.exp(t_lp).sum(axis=1),
        "top1_agreement": (s_ids[:, 0] == t_ids[:, 0]).astype(np.float64),
        "student_entropy": h_p,
        "teacher_entropy": h_q,
    }


# Which per-state metrics rest on which possibly-estimated inputs (ScoreArrays exactness masks). Everything else
# uses only top-k ids/log-probs, the sampled-token log-probs, and teacher log-probs at ids inside the teacher's
# own top-k, which every backend returns exactly.
ENTROPY_METRICS = {"entropy_gap": ("student", "teacher"), "entropy_gap_signed": ("student", "teacher"),
                   "student_entropy": ("student",), "teacher_entropy": ("teacher",)}
QUERY_METRICS = ("topk_reverse_kl", "support_mass", "unsupported")  # log q at student top-k ids outside the teacher's top-k


def exact_states(
    student_entropy_exact_N: np.ndarray | None,
    teacher_entropy_exact_N: np.ndarray | None,
    teacher_query_exact_NK: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """metric -> (N,) bool: is the metric exact at each state. Only metrics with an inexact state are returned
    (None masks mean every value is exact)."""
    out = {}
    ent = {"student": student_entropy_exact_N, "teacher": teacher_entropy_exact_N}
    for name, sides in ENTROPY_METRICS.items():
        masks = [np.asarray(ent[s], dtype=bool) for s in sides if ent[s] is not None]
        if masks and not all(m.all() for m in masks):
            out[name] = np.logical_and.reduce(masks)
    if teacher_query_exact_NK is not None:
        rows = np.asarray(teacher_query_exact_NK, dtype=bool).all(axis=1)
        if not rows.all():
            for name in QUERY_METRICS:
                out[name] = rows
    return out


@dataclass(frozen=True)
class Estimate:
    """A pooled mean with a bootstrap confidence interval over prompts. ``n`` = states that entered the mean."""

    mean: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n}

    @classmethod
    def from_dict(cls, d: dict) -> "Estimate":
        return cls(
            mean=_f(d["mean"]), ci_low=_f(d["ci_low"]), ci_high=_f(d["ci_high"]), n=int(d["n"])
        )


def _f(x) -> float:
    return float("nan") if x is None else float(x)


def group_sums(values_N: np.ndarray, group_N: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-group sum and count of the finite entries of ``values_N``; ``group_N`` holds ids in [0, n_groups)."""
    finite = np.isfinite(values_N)
    sums = np.bincount(group_N[finite], weights=values_N[finite], minlength=n_groups)
    counts = np.bincount(group_N[finite], minlength=n_groups).astype(np.float64)
    return sums, counts


def bootstrap_weights(n_prompts: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_prompts) resampling counts: row b says how often each prompt is drawn in replicate b."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_prompts, np.full(n_prompts, 1.0 / n_prompts), size=n_boot).astype(np.float64)


def pooled_estimate(
    sums_P: np.ndarray, counts_P: np.ndarray, weights_BP: np.ndarray, level: float = 0.95
) -> Estimate:
    """Token-pooled mean Σ sums / Σ counts, with a percentile bootstrap CI that resamples whole prompts.

    Resampling prompts, not tokens, because states within a rollout are strongly correlated: a CI over tokens
    would be far too narrow.
    """
    total = counts_P.sum()
    if total == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    mean = float(sums_P.sum() / total)
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = (weights_BP @ sums_P) / (weights_BP @ counts_P)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return Estimate(mean, float("nan"), float("nan"), int(total))
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(reps, [alpha, 1.0 - alpha])
    return Estimate(mean, float(lo), float(hi), int(total))


def aggregate(
    states: dict[str, np.ndarray],
    prompt_N: np.ndarray,
    depth_N: np.ndarray,
    n_prompts: int,
    depth_edges: list[int],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Pooled, per-prompt and per-depth-bucket aggregates of per-state metrics.

    ``prompt_N``: prompt index (0..n_prompts-1) of each state; ``depth_N``: its 0-based response position.
    ``depth_edges``: increasing bucket starts, first 0 (e.g. [0, 256, 512]); the last bucket is open-ended.
    Returns {"pooled": {metric: Estimate}, "per_prompt": {metric: (P,) means, NaN where a prompt has no state},
    "per_prompt_states": (P,) counts, "depth": [{"start", "end", "n_states", "metrics": {metric: Estimate}}]}.
    """
    prompt_N = np.asarray(prompt_N, dtype=np.int64)
    depth_N = np.asarray(depth_N, dtype=np.int64)
    weights = bootstrap_weights(n_prompts, n_boot, seed)
    pooled, per_prompt = {}, {}
    for name, vals in states.items():
        sums, counts = group_sums(np.asarray(vals, dtype=np.float64), prompt_N, n_prompts)
        pooled[name] = pooled_estimate(sums, counts, weights, level)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_prompt[name] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    bucket_N = np.searchsorted(np.asarray(depth_edges), depth_N, side="right") - 1
    depth = []
    for b, start in enumerate(depth_edges):
        sel = bucket_N == b
        if not sel.any():
            continue
        end = depth_edges[b + 1] if b + 1 < len(depth_edges) else None
        bucket = {}
        for name, vals in states.items():
            sums, counts = group_sums(np.asarray(vals, dtype=np.float64)[sel], prompt_N[sel], n_prompts)
            bucket[name] = pooled_estimate(sums, counts, weights, level)
        depth.append({"start": int(start), "end": end, "n_states": int(sel.sum()), "metrics": bucket})
    return {
        "pooled": pooled,
        "per_prompt": per_prompt,
        "per_prompt_states": np.bincount(prompt_N, minlength=n_prompts),
        "depth": depth,
    }


def per_prompt_table(agg: dict, prompt_ids: dict[int, str]) -> dict[str, dict]:
    """results.json per_prompt from ``aggregate``'s output: prompt id -> {metric: mean (None: no state), n_states},
    for the prompts in ``prompt_ids`` (index -> id)."""
    out = {}
    for pi in sorted(prompt_ids):
        row = {m: (None if np.isnan(v[pi]) else float(v[pi])) for m, v in agg["per_prompt"].items()}
        row["n_states"] = int(agg["per_prompt_states"][pi])
        out[prompt_ids[pi]] = row
    return out


def depth_edges_for(bucket_size: int, max_depth: int) -> list[int]:
    """Bucket starts 0, size, 2*size, ... covering positions [0, max_depth)."""
    if bucket_size <= 0:
        raise ValueError("bucket_size must be positive")
    return list(range(0, max(max_depth, 1), bucket_size))
