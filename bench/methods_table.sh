#!/usr/bin/env bash
# Every method of train_siamese.py at one equal budget on CIFAR-10 (an ImageFolder copy): the same data, model,
# global batch and steps, each method's own recipe otherwise; the untrained encoder's row is eval/*_init of the
# first run (the same seed builds the same encoder for every method). Prints one results line per method.
#   bash bench/methods_table.sh CIFAR10_IMAGEFOLDER OUT [EPOCHS] [MODEL]
set -uo pipefail
data=$1 out=$2 epochs=${3:-1} model=${4:-simple_cnn}
methods=${METHODS:-"contrastive simclr simsiam byol mocov2 barlowtwins vicreg"}
first=1
for method in $methods; do
    extra=()
    [[ $first == 1 ]] && extra=(--eval-at-start) && first=0
    start=$(date +%s)
    python train_siamese.py --dataset imagefolder --data-dir "$data" --model "$model" --method "$method" \
        --batch-size 256 --epochs "$epochs" --warmup-epochs 0.1 --linear-probe-epochs 10 --eval-every 0 \
        --report-to none --resume never --output-dir "$out/$method" "${extra[@]}" > "$out/$method.log" 2>&1
    echo "$method rc=$? $(( $(date +%s) - start )) s: $(tail -1 "$out/$method.log")"
done
