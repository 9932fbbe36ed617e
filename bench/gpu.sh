#!/bin/bash
# The whole GPU throughput measurement, one table, in under 5 minutes on one H100. The device machine has no
# dataset, no internet and no wandb: CIFAR-sized synthetic data, --report-to none (the scripts import wandb
# only when they log to it). bf16 is bench/throughput.py's GPU default; the encoders build in channels_last themselves.
#   bash bench/gpu.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp}}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
start=$SECONDS
python bench/throughput.py --seconds 5 --json "$out/throughput_gpu.json" 2>&1 | tee "$out/throughput_gpu.txt"
echo "eager table: $((SECONDS - start)) s"
# torch.compile for the target row (resnet18 rotation): compilation takes a minute, so only if time is left.
if (( SECONDS - start < 150 )); then
  timeout 140 python bench/throughput.py --models resnet18 --scripts rotation --compile --seconds 5 \
    --json "$out/throughput_gpu_compiled.json" 2>&1 | tee "$out/throughput_gpu_compiled.txt" || \
    echo "compiled row: did not finish in 140 s"
fi
echo "total: $((SECONDS - start)) s"
