"""Docs stay in step with the code."""

from pathlib import Path

from opd_probe.thresholds import PROVENANCE, Thresholds

ROOT = Path(__file__).resolve().parents[1]


def test_every_threshold_is_documented_with_its_default():
    doc = (ROOT / "docs" / "metrics.md").read_text()
    for name, value in Thresholds().to_dict().items():
        assert f"| `{name}` | {value} |" in doc, f"docs/metrics.md lacks the row for {name} = {value}"
        assert PROVENANCE[name]


def test_readme_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    block = lines[lines.index("```bash") + 1 : lines.index("```")]
    assert len(block) == 2
    assert block[0].endswith("opd-probe demo") and block[1].endswith("pytest")


def test_ci_runs_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[dev]"' in ci and "python -m pytest" in ci
