#!/bin/bash
# RotNet's CIFAR-10 table end to end: pretrain NIN (4 conv blocks) with RotNet's recipe, then evaluate.py's probes
# on every block, trained and untrained, printed next to the paper's figures. Target: one H100, under 10 minutes
# (bf16, channels_last, uint8 images on the GPU).
#
#   bash bench/rotnet_table.sh [OUT_DIR]          # default OUT_DIR: $OUT, else runs/rotnet_table
#
# Data, the first found: $DATA_DIR (ImageFolder train/ and test/); data/cifar10-jpeg, extracted from
# data/cifar10-jpeg.tar.gz when only the archive is there (how the data travels to a machine without internet:
# cp ../shared/data/cifar10-jpeg.tar.gz data/); torchvision's data/cifar-10-batches-py; else CIFAR-sized synthetic
# data (50k/12.5k), whose timings are real but whose accuracies say nothing about CIFAR-10.
# Environment knobs for shorter runs: EPOCHS (200), PROBE_EPOCHS (50), TRAIN_SUBSET (probe on N train images;
# default all), PRETRAIN_ARGS (more options for train_rotation.py, e.g. "--max-steps 150 --skip-eval"), COMPILE=1.
# A rerun with the same OUT_DIR resumes the pretraining from its last checkpoint (or skips it when it finished).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-runs/rotnet_table}}
mkdir -p "$out"

if [[ -n "${DATA_DIR:-}" ]]; then
  data=(--dataset imagefolder --data-dir "$DATA_DIR")
elif [[ -d data/cifar10-jpeg/train || -f data/cifar10-jpeg.tar.gz ]]; then
  [[ -d data/cifar10-jpeg/train ]] || tar -xzf data/cifar10-jpeg.tar.gz -C data
  data=(--dataset imagefolder --data-dir data/cifar10-jpeg)
elif [[ -d data/cifar-10-batches-py ]]; then
  data=(--dataset cifar10 --data-dir data)
else
  echo "no CIFAR-10 found: CIFAR-sized synthetic data (timings are real, accuracies are not CIFAR-10's)"
  data=(--dataset synthetic --synthetic-size 50000)
fi

if nvidia-smi -L >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  launch=(accelerate launch --config_file accelerate_configs/single_gpu.yaml)  # bf16 autocast
else
  launch=(accelerate launch --config_file accelerate_configs/cpu.yaml --num_processes 1)
fi
compile=()
[[ "${COMPILE:-0}" == 1 ]] && compile=(--compile)
subset=()
[[ -n "${TRAIN_SUBSET:-}" ]] && subset=(--train-subset "$TRAIN_SUBSET")

start=$SECONDS
# RotNet (config/CIFAR10_RotNet_NIN4blocks.py): 128 images x 4 rotations per batch, SGD Nesterov, lr 0.1 x0.2 at
# epochs 60/120/160 of 200, weight decay 5e-4, crop (padding 4) + flip. Evaluated once, at the end.
# shellcheck disable=SC2086  # PRETRAIN_ARGS is a list of options
"${launch[@]}" train_rotation.py --model nin "${data[@]}" --epochs "${EPOCHS:-200}" --batch-size 128 \
  --optimizer sgd --lr 0.1 --schedule step --weight-decay 5e-4 --augment crop_flip --eval-every 0 \
  --checkpoint-every 5000 --log-every 100 --report-to none "${compile[@]}" --output-dir "$out/pretrain" \
  ${PRETRAIN_ARGS:-} 2>&1 | tee "$out/pretrain.log"
pretrain_s=$((SECONDS - start))

"${launch[@]}" evaluate.py --encoder "$out/pretrain/final" "${data[@]}" --classifier-epochs "${PROBE_EPOCHS:-50}" \
  "${subset[@]}" --output "$out/rotnet_table.json" 2>&1 | tee "$out/evaluate.log"
echo "pretrain: ${pretrain_s} s, probes: $((SECONDS - start - pretrain_s)) s, total: $((SECONDS - start)) s" \
  | tee "$out/time.txt"
