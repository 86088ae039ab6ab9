#!/usr/bin/env bash
# One GPU check of the CUDA paths (docs/performance.md "GPU"): compare and verify (all arms) on the shipped zoo, and
# the verify-step memory benchmark and the scorer's time against a bare forward, on CUDA. Needs nothing outside the repo (the zoo models ship in opd_probe/zoo;
# no download, no install): run from the repository root on a machine with one CUDA GPU and the package's
# dependencies importable. Budget: under 8 minutes on one GPU. Prints one summary block at the end; exit 0 only when
# every part ran.
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]
set -uo pipefail
OUT=${1:-${OUT:-/tmp/opd-gpu-check}}
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
declare -A STATUS SECONDS_OF
run() {  # run NAME TIMEOUT CMD...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  STATUS[$name]=$rc
  SECONDS_OF[$name]=$(( $(date +%s) - t0 ))
  echo "[$name] rc=$rc in ${SECONDS_OF[$name]} s (log: $OUT/$name.log)" >&2
}

$PY - <<'EOF' >"$OUT/env.txt" 2>&1
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
EOF

# 1. compare on the zoo (the demo's probe settings), on CUDA
run compare 120 $PY -m opd_probe compare zoo:student zoo:aligned zoo:mild zoo:strong \
  --prompts opd_probe/zoo/prompts/probe.jsonl --samples 4 --max-new-tokens 96 --top-k 4 --device cuda \
  --out "$OUT/compare" --overwrite --json --quiet

# 2. verify, all arms (teacher, control, baseline), two seeds, retention, on CUDA with --dtype auto (bf16 autocast)
run verify 300 $PY -m opd_probe verify zoo:student zoo:aligned --prompts opd_probe/zoo/prompts/train.jsonl \
  --eval-prompts opd_probe/zoo/prompts/heldout-hard.jsonl --retain-prompts opd_probe/zoo/prompts/heldout-easy.jsonl \
  --eval-limit 100 --retain-limit 50 --steps 40 --eval-every 20 --seeds 2 --control --loss sampled \
  --batch-prompts 8 --samples 4 --max-new-tokens 96 --lr 3e-4 --warmup-steps 10 --device cuda \
  --control-cache "$OUT/control-cache" --out "$OUT/verify" --overwrite --json --quiet

# 3. the verify step's memory, chunked vs naive, on CUDA (torch.cuda.max_memory_allocated)
run memory 120 $PY benchmarks/bench_verify_memory.py --device cuda --batches 4 16 --reps 2

# 4. the chunked scorer on CUDA against a bare forward pass (benchmarks/bench_scorer.py's time ratio, on a zoo model:
#    bench_scorer.py itself needs SmolLM2 from a package and runs on CPU)
run scorer 120 $PY - <<'EOF2'
import time, torch
from opd_probe.backends.base import ModelSpec
from opd_probe.backends.hf import HFModel
m = HFModel.load(ModelSpec(path="zoo:strong", device="cuda", dtype="float32"))
g = torch.Generator().manual_seed(0)
prompts = [torch.randint(0, m.vocab_size, (16,), generator=g).tolist() for _ in range(64)]
resp = [torch.randint(0, m.vocab_size, (240,), generator=g).tolist() for _ in range(64)]
ids = torch.tensor([p + r for p, r in zip(prompts, resp)], device="cuda")
def bare():
    with torch.no_grad():
        m.model(input_ids=ids).logits
def scorer():
    m.score(prompts, resp, k=16)
for f in (bare, scorer):
    f()
times = {}
for f in (bare, scorer, bare, scorer, bare, scorer):
    torch.cuda.synchronize(); t0 = time.perf_counter(); f(); torch.cuda.synchronize()
    times.setdefault(f.__name__, []).append(time.perf_counter() - t0)
b, s = min(times["bare"]), min(times["scorer"])
print(f"scorer/bare time ratio {s / b:.2f} (bare {b * 1e3:.1f} ms, scorer {s * 1e3:.1f} ms, 64 x 256 tokens)")
EOF2

echo "================ opd-probe GPU check ================"
cat "$OUT/env.txt"
for name in compare verify memory scorer; do
  echo "$name: rc=${STATUS[$name]} (${SECONDS_OF[$name]} s)"
done
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
try:
    res = json.loads((out / "compare" / "results.json").read_text())
    for p in res["pairs"]:
        print(f"compare {p['teacher']}: {p['verdict']['status']} overlap {p['pooled']['overlap_ratio']['mean']:.3f}")
except Exception as e:  # noqa: BLE001
    print("compare: no results", e)
try:
    v = json.loads((out / "verify" / "verify.json").read_text())
    e = v["experiment"]
    print(f"verify: {v['outcome']}; dtype {v['environment'].get('dtype')}; {v['timings']['total_seconds']:.0f} s")
    for k in ("teacher_vs_control", "teacher_vs_baseline", "control_vs_baseline", "retention_teacher_vs_baseline"):
        iv = e["intervals"].get(k)
        print(f"  {k}: " + ("-" if iv is None else f"{iv['mean']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}]"))
except Exception as e:  # noqa: BLE001
    print("verify: no result", e)
EOF
grep -h "median" "$OUT/memory.log" 2>/dev/null | sed 's/^/memory: /'
grep -h "ratio" "$OUT/scorer.log" 2>/dev/null | sed 's/^/scorer: /'
fail=0
for name in compare verify memory scorer; do [ "${STATUS[$name]}" = 0 ] || fail=1; done
exit $fail
