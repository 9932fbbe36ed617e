#!/usr/bin/env bash
# Siamese contrastive training (train_siamese.py) on Slurm. Submit from the repository root:
#   sbatch slurm/siamese.sh [training options]
#   sbatch --nodes=2 --partition=gpu --time=48:00:00 slurm/siamese.sh --model resnet18
#   sbatch --gpus-per-node=4 --cpus-per-task=32 --mem=240G slurm/siamese.sh --model resnet18    # 4 GPUs a node
#   sbatch --gpus-per-node=0 --cpus-per-task=4 --mem=16G slurm/siamese.sh --dataset synthetic --max-steps 30  # no GPU
#   DRY_RUN=1 sbatch --nodes=2 slurm/siamese.sh ...   # prints each node's `accelerate launch` command, trains nothing
# Defaults below: one node with 8 GPUs (bf16), 24 h, and per node 64 CPUs and 480 GB (8 CPUs and 60 GB per
# GPU; fits nodes sold as 512 GB). They are per node (the one task a node runs), not per GPU: scale
# --cpus-per-task and --mem with --gpus-per-node. Command-line sbatch options override these lines.
# Why not --cpus-per-gpu / --mem-per-gpu: Slurm 22.05 then refuses the GPU-less job on nodes without GPUs
# ("Requested node configuration is not available"), and nothing on the command line undoes them
# (--cpus-per-gpu=0 is invalid, --cpus-per-task and --mem are "mutually exclusive" with them).
# Without GPUs, pass --cpus-per-task and --mem that the nodes have, else the job pends (or is refused):
#   bash slurm/check.sh [sbatch options] slurm/siamese.sh   # says whether it can start, else what to add
# Environment: OUTPUT_DIR (else runs/<job name>-<job id>, unless --output-dir is given), REPO_DIR (else the
# submission dir), PROCESSES_PER_NODE (CPU nodes only; default 1), DRY_RUN (see slurm/node.sh).
# Preemption or the time limit: USR1 two minutes early -> checkpoint -> requeue -> resume (same job id); the
# requeue comes at most STOP_GRACE_S (default 90) s after the signal, whether or not the training has stopped.
#SBATCH --job-name=siamese
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --mem=480G
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
source "${REPO_DIR:-${SLURM_SUBMIT_DIR:-.}}/slurm/launch.sh" train_siamese.py "$@"
