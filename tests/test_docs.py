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


def test_select_prompts_defaults_are_documented():
    from opd_probe import config as c

    doc = (ROOT / "docs" / "recipe.md").read_text()
    rows = [
        f"| `--ood-fraction F` | {c.DEFAULT_OOD_FRACTION} |",
        f"| `--rank-by` | `{c.DEFAULT_RANK_BY}` |",
        f"| `--probe-samples N` | {c.DEFAULT_PROBE_SAMPLES} |",
        f"| `--max-new-tokens N` | {c.DEFAULT_MAX_NEW_TOKENS} |",
        f"| `--top-k`, `--temperature`, `--top-p`, `--seed` | {c.DEFAULT_TOP_K}, {c.DEFAULT_TEMPERATURE}, "
        f"{c.DEFAULT_TOP_P}, {c.DEFAULT_SEED} |",
        f"| `--chunk-prompts N` | {c.DEFAULT_CHUNK_PROMPTS} |",
        f"| `--batch-size`, `--score-batch-tokens` | {c.DEFAULT_BATCH_SIZE}, {c.DEFAULT_SCORE_BATCH_TOKENS} |",
        f"(`--chunk-prompts`, default {c.DEFAULT_CHUNK_PROMPTS})",
        f"responses (default {c.DEFAULT_PROBE_SAMPLES}, temperature 1, up to `--max-new-tokens`, default "
        f"{c.DEFAULT_MAX_NEW_TOKENS})",
        f"`--plan-batch B`, default {c.DEFAULT_PLAN_BATCH} = the paper's 64 prompts × 4 responses",
    ]
    for row in rows:
        assert row in " ".join(doc.split()), f"docs/recipe.md lacks: {row}"
    assert "not a measured optimum" in doc and "No mixing ratio is given" in doc  # the default's provenance


def test_compare_defaults_are_documented():
    from opd_probe import config as c

    readme = " ".join((ROOT / "README.md").read_text().split())
    for text in (f"`--samples` per prompt (default {c.DEFAULT_SAMPLES})", f"`--temperature` ({c.DEFAULT_TEMPERATURE})",
                 f"`--top-k` ({c.DEFAULT_TOP_K})", f"`--depth-bucket` ({c.DEFAULT_DEPTH_BUCKET})"):
        assert text in readme, f"README.md lacks: {text}"
    vllm = (ROOT / "docs" / "vllm.md").read_text()
    assert f"| `--vllm-logprobs K'` | log-probs returned per position (default {c.DEFAULT_VLLM_LOGPROBS}," in vllm
    assert f"| `--gpu-memory-utilization` | passed through (default {c.DEFAULT_GPU_MEMORY_UTILIZATION}) |" in vllm
    metrics = (ROOT / "docs" / "metrics.md").read_text()
    assert f"`[0, {c.DEFAULT_DEPTH_BUCKET})`, `[{c.DEFAULT_DEPTH_BUCKET}, {2 * c.DEFAULT_DEPTH_BUCKET})`" in metrics


def test_config_defaults_are_the_ones_the_modules_use():
    """config.py holds the CLI's defaults; the modules that keep their own copy must agree with it."""
    from dataclasses import fields

    from opd_probe import config as c
    from opd_probe import selection
    from opd_probe.report import html
    from opd_probe.run import select

    assert (c.DEFAULT_OOD_FRACTION, c.DEFAULT_RANK_BY) == (selection.DEFAULT_OOD_FRACTION, selection.DEFAULT_RANK_BY)
    assert (c.DEFAULT_PROBE_SAMPLES, c.DEFAULT_CHUNK_PROMPTS) == (select.DEFAULT_PROBE_SAMPLES, select.DEFAULT_CHUNK)
    assert c.DEFAULT_MAX_ROLLOUTS == html.DEFAULT_MAX_ROLLOUTS
    sel = {f.name: f.default for f in fields(select.SelectConfig)}
    probe = {f.name: f.default for f in fields(c.ProbeConfig)}
    shared = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "batch_size", "score_batch_tokens",
              "device", "dtype", "chat_template", "trust_remote_code")
    assert {n: sel[n] for n in shared} == {n: probe[n] for n in shared}
    assert (sel["ood_fraction"], sel["rank_by"], sel["probe_samples"], sel["chunk_prompts"]) == (
        c.DEFAULT_OOD_FRACTION, c.DEFAULT_RANK_BY, c.DEFAULT_PROBE_SAMPLES, c.DEFAULT_CHUNK_PROMPTS)


def test_verify_defaults_agree_across_the_cli_the_config_and_the_docs():
    """`opd-probe verify`'s flag defaults are VerifyConfig's (both come from config.py), and docs/verify.md's
    defaults table states them."""
    from dataclasses import MISSING, fields

    import typer

    from opd_probe import config as c
    from opd_probe.cli import app
    from opd_probe.run.verify import VerifyConfig

    flags = {p.name: p.default for p in typer.main.get_command(app).commands["verify"].params}
    settings = {f.name: f.default for f in fields(VerifyConfig) if f.default is not MISSING}
    shared = sorted(set(flags) & set(settings))
    assert len(shared) >= 30, shared
    assert {n: flags[n] for n in shared} == {n: settings[n] for n in shared}
    assert flags["no_chat_template"] is not settings["chat_template"]
    text = (ROOT / "docs" / "verify.md").read_text()
    for row in (f"| `--loss` | `{c.DEFAULT_VERIFY_LOSS}` |", f"| `--top-k` | {c.DEFAULT_TOP_K} |",
                f"| `--probe-top-k` | {c.DEFAULT_VERIFY_PROBE_TOP_K} |", f"| `--eval-samples` | {c.DEFAULT_VERIFY_EVAL_SAMPLES} |",
                f"| `--seeds` | {c.DEFAULT_VERIFY_SEEDS} |",
                f"| `--control-advantage` | {c.DEFAULT_VERIFY_CONTROL_ADVANTAGE} |",
                f"| `--min-gain` | {c.DEFAULT_VERIFY_MIN_GAIN:g} |"):
        assert row in text, row


def test_the_ci_example_config_is_valid(tmp_path):
    """The [tool.opd-probe] example in docs/ci.md holds only keys and values the merge accepts."""
    import re

    from opd_probe.config import merge_config_file, read_config_file

    text = (ROOT / "docs" / "ci.md").read_text()
    block = re.search(r"```toml\n(.*?)```", text, re.S)
    assert block, "docs/ci.md lost its TOML example"
    path = tmp_path / "pyproject.toml"
    path.write_text(block.group(1))
    table, source = read_config_file(str(path))
    assert table and "thresholds" in table
    settings = merge_config_file({}, set(), table, source)
    assert settings.values["max_new_tokens"] == table["max_new_tokens"]


def test_cli_defaults_are_config_names_not_literals():
    """Every command's option defaults are names (config.py constants), None, a bool, ... or a Path: a literal
    number or string would be a second copy of a default."""
    import ast

    tree = ast.parse((ROOT / "opd_probe" / "cli.py").read_text())
    commands = [f for f in tree.body if isinstance(f, ast.FunctionDef)
                and any("command" in ast.unparse(d) for d in f.decorator_list)]
    assert {f.name for f in commands} >= {"compare", "select_prompts", "report", "demo", "verify"}
    literal = []
    for f in commands:
        for arg, default in zip(f.args.args[len(f.args.args) - len(f.args.defaults):], f.args.defaults):
            ok = isinstance(default, (ast.Name, ast.Call)) or (
                isinstance(default, ast.Constant) and (default.value is None or default.value is Ellipsis
                                                       or isinstance(default.value, bool)))
            if not ok:
                literal.append(f"{f.name}({arg.arg}={ast.unparse(default)})")
    assert not literal, literal
