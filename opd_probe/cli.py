"""The typer app: the only module that prints results or picks exit codes.

Exit codes (a contract, tested): 0 = every gated pair passes (no gate yet: the probe finished), 1 = the gate
tripped, 2 = no verdict could be produced (bad input, a model that won't load, out of memory, any crash, Ctrl-C).
Results go to stdout; progress, warnings and errors go to stderr.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import typer

from . import __version__
from . import cli_options as opt
from .config import (DEFAULT_BACKEND, DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_PROMPTS, DEFAULT_DEPTH_BUCKET, DEFAULT_DEVICE,
                     DEFAULT_DTYPE, DEFAULT_GPU_MEMORY_UTILIZATION, DEFAULT_MAX_NEW_TOKENS, DEFAULT_MAX_ROLLOUTS,
                     DEFAULT_OOD_FRACTION, DEFAULT_PIPELINE_PARALLEL_SIZE, DEFAULT_PROBE_SAMPLES, DEFAULT_RANK_BY,
                     DEFAULT_REQUEST_CONCURRENCY, DEFAULT_REQUEST_TIMEOUT, DEFAULT_SAMPLES, DEFAULT_SCORE_BATCH_TOKENS,
                     DEFAULT_SEED, DEFAULT_TEMPERATURE,
                     DEFAULT_ALIGNMENT, DEFAULT_TEMPLATE, DEFAULT_TENSOR_PARALLEL_SIZE, DEFAULT_TOP_K, DEFAULT_TOP_P,
                     DEFAULT_VERIFY_BATCH_PROMPTS, DEFAULT_VERIFY_COLD_START, DEFAULT_VERIFY_COLD_START_EPOCHS,
                     DEFAULT_VERIFY_COLD_START_TARGET, DEFAULT_VERIFY_CONTROL_ADVANTAGE, DEFAULT_VERIFY_EVAL_EVERY,
                     DEFAULT_VERIFY_EVAL_SAMPLES, DEFAULT_VERIFY_EVAL_TEMPERATURE, DEFAULT_VERIFY_GRAD_CLIP,
                     DEFAULT_VERIFY_LOSS, DEFAULT_VERIFY_LR, DEFAULT_VERIFY_MAX_NEW_TOKENS, DEFAULT_VERIFY_MIN_GAIN,
                     DEFAULT_VERIFY_PROBE_TOP_K, DEFAULT_VERIFY_RETAIN_TOLERANCE, DEFAULT_VERIFY_SEEDS,
                     DEFAULT_VERIFY_STEPS, DEFAULT_VERIFY_WARMUP_STEPS, DEFAULT_VLLM_LOGPROBS, ProbeConfig)
from .errors import ProbeError

EXIT_OK, EXIT_GATE, EXIT_ERROR = 0, 1, 2

app = typer.Typer(
    name="opd-probe",
    help="Will on-policy distillation from TEACHER into STUDENT work on these prompts? Find out before training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_state = {"debug": False}


def _consoles():
    from rich.console import Console

    out = Console()
    if not out.is_terminal:  # piped or captured: don't squeeze the table into 80 columns
        out = Console(width=150)
    return out, Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"opd-probe {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    # eager: handled while parsing, so `opd-probe --version` needs no command
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
):
    _state["debug"] = debug


@app.command()
def compare(
    ctx: typer.Context,
    student: opt.Student,
    teachers: opt.Teachers,
    prompts: opt.ProbePrompts = None,
    out: opt.CompareOut = ...,
    samples: opt.Samples = DEFAULT_SAMPLES,
    temperature: opt.Temperature = DEFAULT_TEMPERATURE,
    top_p: opt.TopP = DEFAULT_TOP_P,
    max_new_tokens: opt.MaxNewTokens = DEFAULT_MAX_NEW_TOKENS,
    seed: opt.CompareSeed = DEFAULT_SEED,
    top_k: opt.TopK = DEFAULT_TOP_K,
    depth_bucket: opt.DepthBucket = DEFAULT_DEPTH_BUCKET,
    no_chat_template: opt.NoChatTemplate = False,
    limit: opt.Limit = None,
    device: opt.Device = DEFAULT_DEVICE,
    dtype: opt.Dtype = DEFAULT_DTYPE,
    trust_remote_code: opt.TrustRemoteCode = False,
    backend: opt.Backend = DEFAULT_BACKEND,
    rollout_backend: opt.RolloutBackend = None,
    score_backend: opt.ScoreBackend = None,
    exact_entropy: opt.ExactEntropy = False,
    device_map: opt.DeviceMap = None,
    tensor_parallel_size: opt.TensorParallelSize = DEFAULT_TENSOR_PARALLEL_SIZE,
    pipeline_parallel_size: opt.PipelineParallelSize = DEFAULT_PIPELINE_PARALLEL_SIZE,
    gpu_memory_utilization: opt.GpuMemoryUtilization = DEFAULT_GPU_MEMORY_UTILIZATION,
    max_model_len: opt.MaxModelLen = None,
    vllm_logprobs: opt.VllmLogprobs = DEFAULT_VLLM_LOGPROBS,
    teacher_tokenizer: opt.TeacherTokenizer = None,
    request_concurrency: opt.RequestConcurrency = DEFAULT_REQUEST_CONCURRENCY,
    request_timeout: opt.RequestTimeout = DEFAULT_REQUEST_TIMEOUT,
    batch_size: opt.CompareBatchSize = DEFAULT_BATCH_SIZE,
    score_batch_tokens: opt.ScoreBatchTokens = DEFAULT_SCORE_BATCH_TOKENS,
    reuse: opt.Reuse = None,
    resume: opt.CompareResume = False,
    overwrite: opt.Overwrite = False,
    continuation_depths: opt.ContinuationDepths = None,
    grad_norm: opt.GradNorm = False,
    template: opt.Template = DEFAULT_TEMPLATE,
    alignment: opt.Alignment = DEFAULT_ALIGNMENT,
    plan_steps: opt.PlanSteps = None,
    plan_batch: opt.PlanBatch = None,
    plan_max_tokens: opt.PlanMaxTokens = None,
    gate: opt.Gate = False,
    strict: opt.Strict = False,
    fail_on: opt.FailOn = None,
    exit_zero: opt.ExitZero = False,
    summary_md: opt.SummaryMd = None,
    html: opt.CompareHtml = None,
    config: opt.ConfigFile = None,
    threshold: opt.Threshold = None,
    json_out: opt.CompareJson = False,
    quiet: opt.Quiet = False,
):
    """Probe STUDENT against every TEACHER on the student's own rollouts, give each a verdict, rank them."""
    from .config import fail_on_statuses, merge_config_file, probe_values, read_config_file
    from .thresholds import load_thresholds

    values = probe_values(ctx.params)
    table, source = read_config_file(str(config) if config else None)
    settings = merge_config_file(values, opt.given_on_command_line(ctx), table, source)
    cfg = ProbeConfig(**settings.values)
    thresholds = load_thresholds(settings.thresholds, threshold)
    statuses = fail_on_statuses(fail_on, strict, gate, settings.fail_on)
    return _run_and_print(cfg, json_out=json_out, quiet=quiet, thresholds=thresholds, fail_on=statuses,
                          exit_zero=exit_zero, summary_md=summary_md, html=html)


@app.command("select-prompts")
def select_prompts(
    ctx: typer.Context,
    student: opt.Student,
    teacher: opt.Teacher,
    pool: opt.Pool = ...,
    keep: opt.Keep = ...,
    out: opt.SelectOut = ...,
    ood_fraction: opt.OodFraction = DEFAULT_OOD_FRACTION,
    rank_by: opt.RankBy = DEFAULT_RANK_BY,
    probe_samples: opt.ProbeSamples = DEFAULT_PROBE_SAMPLES,
    max_new_tokens: opt.MaxNewTokens = DEFAULT_MAX_NEW_TOKENS,
    temperature: opt.Temperature = DEFAULT_TEMPERATURE,
    top_p: opt.TopP = DEFAULT_TOP_P,
    top_k: opt.TopK = DEFAULT_TOP_K,
    seed: opt.SelectSeed = DEFAULT_SEED,
    work: opt.Work = None,
    chunk_prompts: opt.ChunkPrompts = DEFAULT_CHUNK_PROMPTS,
    batch_size: opt.SelectBatchSize = DEFAULT_BATCH_SIZE,
    score_batch_tokens: opt.ScoreBatchTokens = DEFAULT_SCORE_BATCH_TOKENS,
    no_chat_template: opt.NoChatTemplate = False,
    device: opt.Device = DEFAULT_DEVICE,
    dtype: opt.Dtype = DEFAULT_DTYPE,
    trust_remote_code: opt.TrustRemoteCode = False,
    resume: opt.SelectResume = False,
    overwrite: opt.SelectOverwrite = False,
    json_out: opt.SelectJson = False,
    quiet: opt.Quiet = False,
):
    """Keep the candidate training prompts the TEACHER is most aligned with at the STUDENT's own states, mixed
    with out-of-distribution ones (paper section 5.2)."""
    from .config import flag_values
    from .report.console import RichProgress, print_selection
    from .rundir import dumps
    from .run.select import SelectConfig, run_select

    values = flag_values(ctx.params, ("json_out", "quiet", "work"), paths=("pool", "out"))
    cfg = SelectConfig(**values, work=str(work) if work else "")
    stdout, stderr = _consoles()
    with RichProgress(stderr, enabled=not quiet) as progress:
        doc = run_select(cfg, progress=progress)
    from .report.markdown import selection_markdown
    from .rundir import atomic_write_text

    atomic_write_text(Path(cfg.work).expanduser() / "summary.md", selection_markdown(doc))
    if json_out:
        sys.stdout.write(dumps(doc) + "\n")
    else:
        print_selection(doc, stdout, stderr)
        stderr.print(f"[dim]wrote {cfg.out} ({cfg.keep} prompts) and {cfg.work}/selection.json, scores.jsonl, "
                     "summary.md[/dim]")
    return EXIT_OK


def _run_and_print(cfg: ProbeConfig, json_out: bool, quiet: bool, thresholds=None, fail_on: tuple = (),
                   exit_zero: bool = False, summary_md: Path | None = None, html: Path | None = None) -> int:
    from .run.probe import run_probe
    from .report.console import RichProgress, print_results
    from .rundir import atomic_write_text, dumps
    from .report.markdown import summary_markdown

    stdout, stderr = _consoles()
    with RichProgress(stderr, enabled=not quiet) as progress:
        results = run_probe(cfg, progress=progress, thresholds=thresholds, fail_on=fail_on)
    gate = results.gate
    tripped = gate["tripped_by"] if gate else []
    md = summary_markdown(results)
    atomic_write_text(Path(cfg.out) / "summary.md", md)
    if summary_md is not None:
        try:  # append: $GITHUB_STEP_SUMMARY collects several steps
            with open(summary_md, "a", encoding="utf-8") as f:
                f.write(md)
        except OSError as e:
            from .errors import OutputError

            raise OutputError(f"--summary-md {summary_md}: {e.strerror or e}", fix="pass a writable file path") from e
    if html is not None:
        from .report.html import write_html

        size = write_html([cfg.out], html)
        stderr.print(f"[dim]wrote {html} ({size / 1024:.0f} KiB)[/dim]")
    if json_out:
        sys.stdout.write(dumps(results.to_dict()) + "\n")
    else:
        print_results(results, stdout, stderr)
        if gate is not None:
            msg = ("[green]gate passed[/green]" if gate["passed"] else
                   f"[red]gate tripped[/red] by {', '.join(tripped)} (fails on {', '.join(fail_on)})")
            stderr.print(msg + (" (--exit-zero: exiting 0)" if tripped and exit_zero else ""))
        stderr.print(f"[dim]wrote {cfg.out}/results.json, summary.md, states.parquet, rollouts.jsonl[/dim]")
    return EXIT_GATE if tripped and not exit_zero else EXIT_OK


@app.command()
def report(
    runs: opt.Runs,
    html: opt.ReportHtml = None,
    md: opt.ReportMd = None,
    json_out: opt.ReportJson = False,
    max_rollouts: opt.MaxRollouts = DEFAULT_MAX_ROLLOUTS,
    plan_steps: opt.PlanSteps = None,
    plan_batch: opt.PlanBatch = None,
    plan_max_tokens: opt.PlanMaxTokens = None,
):
    """Show or export the results of finished runs (from their out directories alone; no model is loaded)."""
    from .config import cost_plan, plan_values
    from .report.html import write_html
    from .report.markdown import report_markdown
    from .report.runs import load_runs
    from .rundir import dumps

    plan = plan_values(plan_steps, plan_batch, plan_max_tokens)
    loaded = load_runs(runs)
    spec = cost_plan(plan)
    if spec is not None:
        from dataclasses import replace

        from .costs import project_results

        for r in loaded:
            if r.kind == "compare":
                r.results = replace(r.results, plan=project_results(spec, r.results))
    stdout, stderr = _consoles()
    if html is not None:
        size = write_html(loaded, html, max_rollouts=max_rollouts)
        stderr.print(f"[dim]wrote {html} ({size / 1024:.0f} KiB)[/dim]")
    if md is not None:
        from .errors import OutputError
        from .rundir import atomic_write_text

        try:
            atomic_write_text(Path(md).expanduser(), report_markdown(loaded))
        except OSError as e:
            raise OutputError(f"--md {md}: {e.strerror or e}", fix="pass a writable file path") from e
        stderr.print(f"[dim]wrote {md}[/dim]")
    if json_out:
        docs = [r.results.to_dict() if r.kind == "compare" else r.selection if r.kind == "select" else r.verify
                for r in loaded]
        sys.stdout.write(dumps(docs[0] if len(docs) == 1 else docs) + "\n")
    elif html is None and md is None:
        from rich.markup import escape

        from .report.console import print_results, print_selection, print_verify
        from .run.verify import VerifyResult

        for r in loaded:
            if len(loaded) > 1:
                stdout.rule(escape(f"{r.label} ({r.kind})"))
            if r.kind == "compare":
                print_results(r.results, stdout, stderr)
            elif r.kind == "select":
                print_selection(r.selection, stdout, stderr)
            else:
                print_verify(VerifyResult.from_dict(r.verify), stdout)
    return EXIT_OK


@app.command()
def verify(
    ctx: typer.Context,
    student: opt.Student,
    teacher: opt.Teacher,
    prompts: opt.TrainPrompts = None,
    eval_prompts: opt.EvalPrompts = None,
    retain_prompts: opt.RetainPrompts = None,
    out: opt.VerifyOut = None,
    steps: opt.Steps = DEFAULT_VERIFY_STEPS,
    seeds: opt.Seeds = DEFAULT_VERIFY_SEEDS,
    control: opt.Control = False,
    control_cache: opt.ControlCache = None,
    control_advantage: opt.ControlAdvantage = DEFAULT_VERIFY_CONTROL_ADVANTAGE,
    min_gain: opt.MinGain = DEFAULT_VERIFY_MIN_GAIN,
    retain_tolerance: opt.RetainTolerance = DEFAULT_VERIFY_RETAIN_TOLERANCE,
    lr: opt.Lr = DEFAULT_VERIFY_LR,
    batch_prompts: opt.BatchPrompts = DEFAULT_VERIFY_BATCH_PROMPTS,
    samples: opt.VerifySamples = DEFAULT_SAMPLES,
    top_k: opt.VerifyTopK = DEFAULT_TOP_K,
    probe_top_k: opt.ProbeTopK = DEFAULT_VERIFY_PROBE_TOP_K,
    loss: opt.Loss = DEFAULT_VERIFY_LOSS,
    alignment: opt.Alignment = DEFAULT_ALIGNMENT,
    max_new_tokens: opt.VerifyMaxNewTokens = DEFAULT_VERIFY_MAX_NEW_TOKENS,
    eval_every: opt.EvalEvery = DEFAULT_VERIFY_EVAL_EVERY,
    eval_samples: opt.EvalSamples = DEFAULT_VERIFY_EVAL_SAMPLES,
    eval_temperature: opt.EvalTemperature = DEFAULT_VERIFY_EVAL_TEMPERATURE,
    warmup_steps: opt.WarmupSteps = DEFAULT_VERIFY_WARMUP_STEPS,
    grad_clip: opt.GradClip = DEFAULT_VERIFY_GRAD_CLIP,
    cold_start: opt.ColdStart = DEFAULT_VERIFY_COLD_START,
    cold_start_epochs: opt.ColdStartEpochs = DEFAULT_VERIFY_COLD_START_EPOCHS,
    cold_start_target: opt.ColdStartTarget = DEFAULT_VERIFY_COLD_START_TARGET,
    limit: opt.VerifyLimit = None,
    eval_limit: opt.EvalLimit = None,
    retain_limit: opt.RetainLimit = None,
    seed: opt.VerifySeed = DEFAULT_SEED,
    no_chat_template: opt.NoChatTemplate = False,
    device: opt.Device = DEFAULT_DEVICE,
    teacher_device: opt.TeacherDevice = None,
    dtype: opt.VerifyDtype = DEFAULT_DTYPE,
    trust_remote_code: opt.TrustRemoteCode = False,
    save: opt.Save = None,
    overwrite: opt.Overwrite = False,
    resume: opt.VerifyResume = False,
    gate: opt.VerifyGate = False,
    print_recipe: opt.PrintRecipe = None,
    json_out: opt.VerifyJson = False,
    quiet: opt.Quiet = False,
):
    """Run a short real OPD as a controlled experiment: teacher arm, optional no-teacher control, the untouched
    student; a verdict from paired CIs over problems and seeds."""
    from .run.verify import VerifyConfig

    cfg = VerifyConfig.from_flags(ctx.params)
    if print_recipe is not None:
        return _print_recipe(print_recipe, cfg, out)
    if out is None:
        from .errors import InputError

        raise InputError("verify needs an output directory", fix="pass --out DIR")
    from .report.console import RichProgress, print_verify
    from .rundir import dumps
    from .run.verify import run_verify

    stdout, stderr = _consoles()
    with RichProgress(stderr, enabled=not quiet) as progress:
        result = run_verify(cfg, progress=progress)
    if json_out:
        sys.stdout.write(dumps(result.to_dict()) + "\n")
    else:
        print_verify(result, stdout)
        stderr.print(f"[dim]wrote {cfg.out}/verify.json, steps.parquet, arms/[/dim]")
    return EXIT_GATE if gate and not result.criteria["passed"] else EXIT_OK


def _print_recipe(engine: str, cfg, out: Path | None) -> int:
    """--print-recipe: the verl or trl settings of ``cfg``, and the control-arm result of a finished run in ``out``."""
    from .errors import InputError
    from .recipe import ENGINES, recipe
    from .run.verify import recipe_evidence

    if engine not in ENGINES:
        raise InputError(f"unknown --print-recipe engine {engine!r}", fix=f"use one of: {', '.join(ENGINES)}")
    from .run.cross import other_tokenizer

    sys.stdout.write(recipe(engine, cfg, cross_tokenizer=other_tokenizer(cfg)) + recipe_evidence(out))
    return EXIT_OK


@app.command()
def demo(
    out: opt.DemoOut = Path("runs/demo"),
    smollm2: opt.DemoSmollm2 = False,
    cache: opt.DemoCache = None,
    json_out: opt.DemoJson = False,
    quiet: opt.Quiet = False,
):
    """Probe the shipped model zoo offline and show each verdict beside the outcome real OPD runs measured.

    Student zoo:student against zoo:aligned, zoo:mild, zoo:strong, zoo:same-recipe; zoo:same-recipe (a second
    pretraining seed of the student's recipe) against zoo:aligned; zoo:successor against zoo:student (reverse
    distillation). The zoo is tiny models trained by this project on 5-digit addition, each pair's OPD outcome
    measured with `opd-probe verify` (docs/zoo.md). Writes one run folder per student under OUT, and
    OUT/report.html.
    """
    from .lab.demo import smollm2_config

    stdout, stderr = _consoles()
    if smollm2:
        cfg = smollm2_config(out=out, cache=cache, log=lambda m: stderr.print(f"[dim]{m}[/dim]"))
        return _run_and_print(cfg, json_out=json_out, quiet=quiet)
    return _zoo_demo(out, json_out, quiet)


def _zoo_demo(out: Path, json_out: bool, quiet: bool) -> int:
    from .lab.demo import ground_truth, prediction_rows, scorecard, validation_report, zoo_configs
    from .run.probe import run_probe
    from .report.console import RichProgress, print_prediction_table, print_results, print_validation_headline
    from .report.html import write_html
    from .rundir import atomic_write_text, dumps
    from .report.markdown import summary_markdown

    stdout, stderr = _consoles()
    configs, results = zoo_configs(out), []
    for cfg in configs:
        with RichProgress(stderr, enabled=not quiet) as progress:
            res = run_probe(cfg, progress=progress)
        atomic_write_text(Path(cfg.out) / "summary.md", summary_markdown(res))
        results.append(res)
        if not json_out:
            print_results(res, stdout, stderr)
    rows = prediction_rows(results, ground_truth())
    html = Path(out) / "report.html"
    size = write_html([cfg.out for cfg in configs], html)
    if json_out:
        sys.stdout.write(dumps({"runs": [r.to_dict() for r in results], "predictions": rows,
                                "validation": (validation_report() or {}).get("heldout")}) + "\n")
    else:
        print_prediction_table(rows, stdout, scorecard(rows))
        print_validation_headline(validation_report(), stdout)
    stderr.print(f"[dim]wrote {', '.join(c.out for c in configs)} and {html} "
                 f"({size / 1024:.0f} KiB)[/dim]")
    return EXIT_OK


@app.command()
def check(
    student: opt.Student,
    teachers: opt.Teachers,
    prompts: opt.CheckPrompts = None,
    limit: opt.Limit = None,
    max_new_tokens: opt.MaxNewTokens = DEFAULT_MAX_NEW_TOKENS,
    top_k: opt.TopK = DEFAULT_TOP_K,
    backend: opt.CheckBackend = DEFAULT_BACKEND,
    vllm_logprobs: opt.VllmLogprobs = DEFAULT_VLLM_LOGPROBS,
    teacher_tokenizer: opt.TeacherTokenizer = None,
    batch_size: opt.CheckBatchSize = DEFAULT_BATCH_SIZE,
    no_chat_template: opt.NoChatTemplate = False,
    template: opt.Template = DEFAULT_TEMPLATE,
    device: opt.Device = DEFAULT_DEVICE,
    dtype: opt.Dtype = DEFAULT_DTYPE,
    device_map: opt.DeviceMap = None,
    trust_remote_code: opt.TrustRemoteCode = False,
    json_out: opt.CheckJson = False,
):
    """Preflight in seconds, without loading a weight: token -> id maps, stop tokens, chat-template renderings,
    context, top-k, remote code, dtype and memory per model (docs/check.md). Exit 0: all ok; 1: warnings;
    2: an error (the run would fail) or bad input."""
    import json

    from .check import Plan, exit_code
    from .prompts import load_prompts
    from .run.preflight import findings
    from .templates import parse_templates

    try:
        tmpl = parse_templates(template)
    except ValueError as e:
        from .errors import InputError

        raise InputError(f"--template: {e}", fix="use student, teacher or student,teacher") from e
    plan = Plan(max_new_tokens=max_new_tokens, top_k=top_k, backend=backend, vllm_logprobs=vllm_logprobs,
                chat_template=not no_chat_template, template=tmpl, dtype=dtype, device=device,
                device_map=device_map, batch_size=batch_size, trust_remote_code=trust_remote_code,
                alignment=DEFAULT_ALIGNMENT, teacher_tokenizer=teacher_tokenizer)
    loaded = load_prompts(prompts, limit=limit) if prompts is not None else None
    found = findings(student, list(teachers), plan, loaded)
    if json_out:
        for f in found:
            sys.stdout.write(json.dumps(f.to_dict(), ensure_ascii=False, default=str) + "\n")
    else:
        from .report.console import print_findings

        print_findings(found, student, list(teachers), _consoles()[0])
    return exit_code(found)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: maps every failure to exit code 2 (never 1, which means 'gate tripped')."""
    import click

    try:  # newer typer (0.29 here) ships its own copy of click, whose exceptions do not derive from click's
        from typer._click.exceptions import ClickException as TyperClickException
    except ImportError:  # older typer uses click itself
        TyperClickException = click.ClickException
    args = sys.argv[1:] if argv is None else argv
    _state["debug"] = "--debug" in args
    try:
        rv = typer.main.get_command(app).main(args=args, prog_name="opd-probe", standalone_mode=False)
        if rv == 130:  # newer typer turns Ctrl-C into a returned exit code 130 (128 + SIGINT)
            raise KeyboardInterrupt
        code = rv if isinstance(rv, int) else EXIT_OK
    except ProbeError as e:
        if _state["debug"]:
            traceback.print_exc()
        sys.stderr.write(f"error: {e.message}\n")
        if e.fix:
            sys.stderr.write(f"fix: {e.fix}\n")
        code = EXIT_ERROR
    except (click.ClickException, TyperClickException) as e:  # usage errors
        e.show()
        code = EXIT_ERROR
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        sys.stderr.write("interrupted: finished work is saved (compare: in --out; select-prompts: in --work); "
                         "continue with the same command plus "
                         "--resume\n")
        code = EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - any crash is exit 2, never 1
        if isinstance(e, MemoryError) or "OutOfMemory" in type(e).__name__:
            sys.stderr.write(f"error: out of memory ({type(e).__name__})\n"
                             "fix: lower --score-batch-tokens and continue with --resume (finished work is kept); if sampling ran "
                             "out of memory, start over with a smaller --batch-size or --max-new-tokens, or use "
                             "--dtype bfloat16 on GPU\n")
            sys.exit(EXIT_ERROR)
        if _state["debug"]:
            traceback.print_exc()
        else:
            sys.stderr.write(f"error: internal error: {type(e).__name__}: {e}\n"
                             "fix: re-run with --debug for the traceback and report it; no verdict was produced\n")
        code = EXIT_ERROR
    sys.exit(code)
