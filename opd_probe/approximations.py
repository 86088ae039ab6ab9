"""Which metric values are estimates, and how they were made (pure bookkeeping on the scores' exact-masks).

A backend that cannot give an exact value at a state (vLLM: entropies from its top-K' log-probs, teacher log-probs
outside its top-K' bounded) flags that state; these functions turn the flags into the ``pairs[].approximate``
record of results.json and the warnings that name the way to exact values (docs/vllm.md).
"""

from __future__ import annotations

import numpy as np

from . import metrics

_HOW_FALLBACK = {"entropy": "estimated from top-K' log-probs (see docs/vllm.md)",
                 "query": "teacher log-probs outside its top-K' replaced by an upper bound (see docs/vllm.md)"}


def approximations(exact: dict[str, np.ndarray], how: dict[str, str]) -> dict:
    """metric -> {"exact_fraction", "how"} for every metric with an estimated state; {} when all are exact.

    ``how``: {"entropy": ..., "query": ...}, how the backend that produced the estimates made them.
    """
    out = {}
    for name, mask in exact.items():
        key = "query" if name in metrics.QUERY_METRICS else "entropy"
        out[name] = {"exact_fraction": float(np.mean(mask)) if mask.size else 1.0,
                     "how": how.get(key) or _HOW_FALLBACK[key]}
    return out


def approximation_how(student, student_info: dict, teacher, teacher_info: dict) -> dict:
    """How each estimate in these two score sets (ScoreArrays) was made, from the info of the backend that made
    it."""
    how = {}
    for scores, info in ((student, student_info), (teacher, teacher_info)):
        if scores.entropy_exact_L is not None and not scores.entropy_exact_L.all():
            how.setdefault("entropy", (info.get("approximations") or {}).get("entropy"))
    if teacher.query_exact_LQ is not None and not teacher.query_exact_LQ.all():
        how["query"] = (teacher_info.get("approximations") or {}).get("query")
    return {k: v for k, v in how.items() if v}


def approximation_warnings(approx: dict) -> list[str]:
    """One line per kind of estimate, naming the metrics it affects and the way to exact values."""
    lines = []
    served = "load the teacher locally for exact values, or start its server with a larger --max-logprobs and " \
             "raise --vllm-logprobs for tighter bounds"  # a served teacher (backends/served.py)
    ent = [m for m in approx if m in metrics.ENTROPY_METRICS]
    if ent:
        how = approx[ent[0]]["how"]
        lines.append(f"approximate: {', '.join(ent)} ({how}); " + (served if how.startswith("served") else
                     "--exact-entropy scores with the transformers scorer for exact values"))
    for m in metrics.QUERY_METRICS:
        if m in approx:
            how = approx[m]["how"]
            lines.append(f"approximate: {m} is a lower bound at {1 - approx[m]['exact_fraction']:.0%} of states "
                         f"({how}); " + (served if how.startswith("served") else
                                         "raise --vllm-logprobs, or use --score-backend hf for exact values"))
    return lines
