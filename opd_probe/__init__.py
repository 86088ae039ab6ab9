"""opd-probe: will on-policy distillation from teacher T into student S work? Find out before training.

Public API (imported lazily so that `opd-probe --help` does not import torch):
    run_probe(config, progress=None) -> ProbeResults
    load_results(out_dir) -> ProbeResults
    ProbeConfig
"""

__version__ = "0.1.0"

__all__ = ["__version__", "run_probe", "load_results", "ProbeConfig"]


def __getattr__(name):
    if name == "run_probe":
        from .run.probe import run_probe

        return run_probe
    if name == "load_results":
        from .rundir import load_results

        return load_results
    if name == "ProbeConfig":
        from .config import ProbeConfig

        return ProbeConfig
    raise AttributeError(name)
