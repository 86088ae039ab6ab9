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


def test_recipe_defaults_are_documented_and_agree_with_the_cli():
    import inspect

    from opd_probe import cli, selection
    from opd_probe.run.select import DEFAULT_PROBE_SAMPLES, SelectConfig

    doc = (ROOT / "docs" / "recipe.md").read_text()
    assert f"| `--ood-fraction F` | {selection.DEFAULT_OOD_FRACTION} |" in doc
    assert f"| `--rank-by` | `{selection.DEFAULT_RANK_BY}` |" in doc
    assert f"| `--probe-samples N` | {DEFAULT_PROBE_SAMPLES} |" in doc
    assert "not a measured optimum" in doc and "No mixing ratio is given" in doc  # the default's provenance
    params = inspect.signature(cli.select_prompts).parameters
    assert params["ood_fraction"].default.default == selection.DEFAULT_OOD_FRACTION == SelectConfig.ood_fraction
    assert params["rank_by"].default.default == selection.DEFAULT_RANK_BY
    assert params["probe_samples"].default.default == DEFAULT_PROBE_SAMPLES
