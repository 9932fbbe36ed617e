#!/bin/bash
# The whole GPU throughput measurement, one table, in under 5 minutes on one H100. The device machine has no
# dataset, no internet and no wandb: CIFAR-sized synthetic data, --report-to none (the scripts import wandb
# only when they log to it). bf16 is bench/throughput.py's GPU default; the encoders build in channels_last themselves.
#   bash bench/gpu.sh [OUT_DIR]
# Environment: PYTHON (default python3), MEASURE_S (timed seconds per measurement, default 5), BUDGET_S (the whole
# script, default 300: the compiled row runs only if COMPILE_S, default 140, of it are left after the eager table),
# MODELS, SCRIPTS and SYNTHETIC_SIZE (bench/throughput.py's --models, --scripts, --synthetic-size; default: its own).
# throughput_gpu.json is rewritten as each row ends: a table stopped by BUDGET_S keeps the rows it measured.
# bench/gpu_check.py runs it with MEASURE_S=2, fewer rows, a smaller synthetic set and the time its step has left.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp}}
PYTHON=${PYTHON:-python3}
MEASURE_S=${MEASURE_S:-5} BUDGET_S=${BUDGET_S:-300} COMPILE_S=${COMPILE_S:-140}
size=()
[[ -z ${SYNTHETIC_SIZE:-} ]] || size=(--synthetic-size "$SYNTHETIC_SIZE")
eager=("${size[@]}")
# shellcheck disable=SC2206  # MODELS and SCRIPTS are lists of words
[[ -z ${MODELS:-} ]] || eager+=(--models $MODELS)
# shellcheck disable=SC2206
[[ -z ${SCRIPTS:-} ]] || eager+=(--scripts $SCRIPTS)
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true  # torch may see a GPU it does not list
start=$SECONDS
timeout -k 5 "$BUDGET_S" "$PYTHON" -m bench.throughput "${eager[@]}" --seconds "$MEASURE_S" \
  --json "$out/throughput_gpu.json" 2>&1 | tee "$out/throughput_gpu.txt" \
  || { echo "eager table: failed or did not finish in BUDGET_S=$BUDGET_S s (its finished rows: throughput_gpu.json)"
       exit 1; }
echo "eager table: $((SECONDS - start)) s"
# torch.compile for the target row (resnet18 rotation): compilation takes a minute or more per measurement.
left=$((BUDGET_S - (SECONDS - start)))
if ((left >= COMPILE_S)); then
  timeout -k 5 "$COMPILE_S" "$PYTHON" -m bench.throughput "${size[@]}" --models resnet18 --scripts rotation --compile \
    --seconds "$MEASURE_S" --json "$out/throughput_gpu_compiled.json" 2>&1 | tee "$out/throughput_gpu_compiled.txt" \
    || echo "compiled row: did not finish in $COMPILE_S s"
else
  echo "compiled row: not run, $left s left of BUDGET_S=$BUDGET_S (it takes up to COMPILE_S=$COMPILE_S)"
fi
echo "total: $((SECONDS - start)) s"
