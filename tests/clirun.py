"""Run the real CLI entry point in-process and capture what a user would see."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from opd_probe.cli import main


@dataclass
class Run:
    code: int
    out: str
    err: str


def cli(*args) -> Run:
    """``opd-probe ARGS``: exit code, stdout and stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
        else:  # pragma: no cover - main() must always exit
            raise AssertionError("main() returned instead of calling sys.exit")
    return Run(code, stdout.getvalue(), stderr.getvalue())


def assert_error(run: Run, *needles: str) -> None:
    """Exit 2, a line starting 'error: ' (the problem) and one starting 'fix: ', every needle, no traceback."""
    assert run.code == 2, (run.code, run.err)
    lines = run.err.strip().splitlines()
    assert any(line.startswith("error: ") for line in lines), run.err
    assert any(line.startswith("fix: ") for line in lines), run.err
    assert "Traceback" not in run.err, run.err
    for n in needles:  # rich may wrap a long message: a needle may span a line break
        assert n in run.err or n in run.err.replace("\n", " "), (n, run.err)
