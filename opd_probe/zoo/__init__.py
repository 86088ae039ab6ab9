"""The model zoo: tiny models trained by this project on a synthetic task, shipped with the package.

`zoo:NAME` anywhere a model is expected resolves to the shipped model folder NAME (see build.py for the roles).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelLoadError

ZOO_MODELS = Path(__file__).resolve().parent / "models"
ZOO_CROSS = Path(__file__).resolve().parent / "cross"  # teachers under another tokenizer (lab/build_cross.py)
ZOO_PROMPTS = Path(__file__).resolve().parent / "prompts"
GROUND_TRUTH = Path(__file__).resolve().parent / "ground_truth.json"
PREFIX = "zoo:"


def calibration_agrees(status: str | None, works: bool) -> bool:
    """Whether a verdict is right about a measured OPD outcome: GO exactly for the pairs where OPD worked.

    CAUTION and NO-GO both count as warning against the pair: a warning on a pair that works is a false alarm, and
    GO on a pair that fails is a miss (docs/zoo.md, "Calibration")."""
    return (status == "go") == bool(works)


def names() -> list[str]:
    return sorted(p.name for p in ZOO_MODELS.iterdir() if (p / "config.json").exists()) if ZOO_MODELS.is_dir() else []


def resolve(path: str) -> str:
    """``zoo:NAME`` -> the shipped folder; anything else unchanged."""
    if not path.startswith(PREFIX):
        return path
    name = path[len(PREFIX):]
    for root in (ZOO_MODELS, ZOO_CROSS):
        if (root / name / "config.json").exists():
            return str(root / name)
    known = names() + cross_names()
    raise ModelLoadError(f"no zoo model named {name!r}",
                         fix=f"use one of: {', '.join('zoo:' + n for n in known) or '(the zoo is not built)'}")


def cross_names() -> list[str]:
    """The zoo's teachers under another tokenizer than the zoo's (docs/cross-tokenizer.md)."""
    return sorted(p.name for p in ZOO_CROSS.iterdir() if (p / "config.json").exists()) if ZOO_CROSS.is_dir() else []
