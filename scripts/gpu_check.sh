#!/usr/bin/env bash
# GPU check: run the seed stage's training loop (bench/seed_speed.py) at a model size that fills this machine's GPU,
# and print tokens/s and model FLOPs utilisation (MFU). Result JSON: bench/results/seed_speed_gpu_check.json.
#
#   scripts/gpu_check.sh                 # largest preset that fits (auto), batch grown to fill the GPU, bf16
#   scripts/gpu_check.sh 1b              # a given preset: tiny | 135m | 360m | 1b | 3b | 8b
#   scripts/gpu_check.sh 8b --steps 20   # extra arguments go to bench/seed_speed.py
#   scripts/gpu_check.sh --cpu-smoke     # no GPU needed: the tiny preset on CPU, 2 steps (~10 s; killed at 120 s)
#
# With auto, a size that runs out of GPU memory (exit 3) is retried with the next smaller preset.
# Environment: PYTHON (default .venv/bin/python, else python3), OUT (result JSON path).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
BENCH=bench/seed_speed.py

summary() {  # the two numbers this check is for, from the result JSON
  "$PYTHON" - "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
print(f"gpu_check: size={r['size']} device={r['device_name']} tokens/s={r['tokens_per_s']:,.0f} MFU={mfu} "
      f"step={r['step_time_s']['median'] * 1e3:,.1f} ms peak_mem={r['peak_memory_bytes'] / 2**30:.2f} GiB")
EOF
}

if [ "${1:-}" = "--cpu-smoke" ]; then
  shift
  out=${OUT:-bench/results/seed_speed_cpu_smoke.json}
  timeout 120 "$PYTHON" "$BENCH" --device cpu --size tiny --steps 2 --warmup 1 --out "$out" "$@"
  summary "$out"
  exit 0
fi

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: nvidia-smi not found: this is not a GPU machine (try: $0 --cpu-smoke)" >&2
  exit 2
fi
echo "gpu_check: GPU(s):"
nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version --format=csv,noheader | sed 's/^/  /'
if ! "$PYTHON" -c 'import sys, torch; print("  torch", torch.__version__, "CUDA", torch.version.cuda); sys.exit(not torch.cuda.is_available())'; then
  echo "gpu_check: torch sees no GPU (a CPU-only torch wheel in $PYTHON?)" >&2
  exit 2
fi

size=auto
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then size=$1; shift; fi
out=${OUT:-bench/results/seed_speed_gpu_check.json}
common=(--device cuda --dtype bfloat16 --mixed-precision bf16 --out "$out")

if [ "$size" != auto ]; then
  "$PYTHON" "$BENCH" --size "$size" "${common[@]}" "$@"
  summary "$out"
  exit 0
fi

read -r -a candidates <<< "$("$PYTHON" "$BENCH" --candidates --device cuda --dtype bfloat16)"
echo "gpu_check: presets that fit, largest first: ${candidates[*]}"
first=1
for candidate in "${candidates[@]}"; do
  if [ "$first" = 1 ]; then
    # The largest preset that fits, with its batch grown to fill the GPU (seed_speed.py --size auto).
    args=(--size auto)
  else
    args=(--size "$candidate")
  fi
  first=0
  set +e
  "$PYTHON" "$BENCH" "${args[@]}" "${common[@]}" "$@"
  status=$?
  set -e
  if [ "$status" -eq 0 ]; then summary "$out"; exit 0; fi
  if [ "$status" -ne 3 ]; then exit "$status"; fi
  echo "gpu_check: out of memory; trying the next smaller preset" >&2
done
echo "gpu_check: no preset fits this GPU" >&2
exit 3
