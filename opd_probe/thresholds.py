"""The verdict's thresholds: one place, each with its provenance, overridable from a config file (read by
config.read_config_file) and flags.

The paper (arXiv 2604.13016) gives no thresholds and no step-0 numbers for failing pairs,
so every default started as a reading of the paper's reported values for successful runs where it has them, and a
stated guess where it has none. The model zoo (docs/zoo.md) checks them against measured OPD outcomes; each
provenance says what the zoo showed, or stays "provisional" where the zoo could not test it.

No torch import here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import InputError


@dataclass(frozen=True)
class Thresholds:
    # --- thinking-pattern compatibility (reason: pattern-mismatch)
    unsupported_nogo: float = 0.05
    entropy_gap_caution: float = 1.0
    # --- signal strength (reason: weak-signal)
    weak_signal_kl: float = 0.02
    # --- knowledge novelty from answers (reason: low-novelty)
    min_answer_gain: float = 0.12
    min_continuation_gain: float = 0.02
    # --- teachers that teach the same thing (noted in reasons and recommendations)
    indistinguishable_overlap: float = 0.90
    indistinguishable_kl: float = 0.05
    # --- depth (reason: horizon-decay)
    horizon_drop: float = 0.10
    horizon_min_states: int = 50
    # --- the teacher's stop (reason: stop-disagreement; compare's lint, docs/lint.md)
    stop_low_share: float = 0.5
    stop_min_states: int = 8
    # --- cold start recommendation
    cold_start_rollouts: int = 2000

    def to_dict(self) -> dict:
        return asdict(self)


PROVENANCE: dict[str, str] = {
    "unsupported_nogo": "measured (docs/validation.md): OPD was wrecked from the zoo's two mismatched teachers, "
                        "whose unsupported share was 0.30 and 0.74 (hard accuracy to 0.00), and not on any of the 21 "
                        "pairs of the benchmark's dev family (max 0.007), including teachers that draw 85% of the "
                        "connector words from another format (+0.94 gain); the line sits in that gap, its place "
                        "inside it is not measured",
    "entropy_gap_caution": "provisional guess (nats): the paper shows a 'substantially smaller' gap for compatible "
                           "pairs (§5.1) but gives no number",
    "weak_signal_kl": "provisional guess (nats/token of the step-0 top-k reverse KL): a near-zero OPD loss is the "
                      "paper's only step-0 marker of a no-new-knowledge teacher (app. B.2: 'much smaller' loss)",
    "min_answer_gain": "fitted on the benchmark's dev family (docs/validation.md): OPD worked from every teacher whose "
                       "depth-0 continuation gain was +0.17 or more and from none at +0.08 or less (same-recipe "
                       "seeds, a teacher keeping 60% of the student's flaw); the line is between; on the zoo the one "
                       "working pair had +0.02 (a miss)",
    "min_continuation_gain": "paper §6.1: teacher continuation gain +0.37 at a 1K prefix vs +0.02 at 16K, where "
                             "the dense reward no longer helps; a gain at or below +0.02 is treated as none",
    "indistinguishable_overlap": "provisional: §3.3 calls two teachers 'distributionally indistinguishable' at "
                                 "student states from coinciding trajectories; it reports no distance",
    "indistinguishable_kl": "provisional (nats/token, symmetric top-k KL between two teachers at student states)",
    "horizon_drop": "provisional: §6.1 reward quality decays with depth; flag an absolute overlap drop of 0.10 "
                    "from the first depth bucket",
    "horizon_min_states": "a depth bucket needs this many states before its overlap is trusted",
    "stop_low_share": "provisional (not measured): more than half of the student's stopping states get the teacher's "
                      "probability of the stop token under 0.1 (lint.STOP_LOW_PROB): a rule, not a few states; on "
                      "the zoo (docs/lint.md) only the strong-mismatch teacher crossed it (0.96; OPD from it "
                      "failed), the other five sat at 0.00-0.09",
    "stop_min_states": "provisional: fewer stopping states than this are too few to call the teacher's stop a rule",
    "cold_start_rollouts": "recommendation size; the paper's cold start used 200K SFT samples for Qwen3-1.7B-Base "
                           "(§5.1) - start small and re-probe",
}


# Thresholds of earlier versions, and why they went: a config file naming one gets an error that says so.
_TIES = ("on the validation benchmark's dev family (docs/validation.md) it read a mismatch for all 21 pairs, "
         "including 10 where OPD gained +0.85 to +0.95: where the student spreads its mass over more near-equal "
         "tokens than k, which of them enter each top-k is chance, so the overlap ratio and masses fall for a "
         "teacher that agrees; the pattern rule now reads the unsupported share (unsupported_nogo)")
REMOVED = {"weak_signal_relative": "it compared a teacher with the strongest other candidate in the run, so a "
                                   "verdict depended on which other teachers were passed",
           "overlap_nogo": _TIES, "overlap_caution": _TIES, "mass_nogo": _TIES, "mass_caution": _TIES,
           "ratio_max_coverage": "it gated the overlap-ratio rules, which are gone: " + _TIES}


def _check_and_coerce(values: dict, where: str) -> dict:
    known = {f.name: f for f in fields(Thresholds)}
    gone = sorted(set(values) & set(REMOVED))
    if gone:
        raise InputError(f"{where}: threshold {gone[0]} no longer exists ({REMOVED[gone[0]]})",
                         fix=f"delete {gone[0]} from the config file or the --threshold flags")
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InputError(f"{where}: unknown threshold(s): {', '.join(unknown)}",
                         fix=f"known thresholds: {', '.join(known)}")
    out = {}
    for name, v in values.items():
        want = int if known[name].type in ("int", int) else float
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            try:
                v = want(str(v))
            except ValueError:
                raise InputError(f"{where}: threshold {name} must be a number, got {v!r}",
                                 fix=f"e.g. {name} = {getattr(Thresholds(), name)}") from None
        out[name] = want(v)
    return out


def load_thresholds(file_values: dict | None = None, overrides: list[str] | None = None) -> Thresholds:
    """Defaults <- config file table <- ``--threshold NAME=VALUE`` flags."""
    values: dict = {}
    if file_values:
        values.update(_check_and_coerce(file_values, "config file [thresholds]"))
    for item in overrides or []:
        if "=" not in item:
            raise InputError(f"--threshold {item!r} is not NAME=VALUE", fix="e.g. --threshold unsupported_nogo=0.1")
        name, _, raw = item.partition("=")
        values.update(_check_and_coerce({name.strip(): raw.strip()}, "--threshold"))
    return Thresholds(**values)
