#!/usr/bin/env bash
# Rotation-prediction pretraining (train_rotation.py) on Slurm. Submit from the repository root:
#   sbatch slurm/rotation.sh [training options]
#   sbatch --nodes=2 --gpus-per-node=4 --partition=gpu --time=48:00:00 slurm/rotation.sh --model resnet18
#   sbatch --gpus-per-node=0 slurm/rotation.sh --dataset synthetic --max-steps 30   # a cluster without GPUs
# Defaults below: one node with 8 GPUs (bf16), 24 h. Command-line sbatch options override these lines.
# Environment: OUTPUT_DIR (else runs/<job name>-<job id>, unless --output-dir is given), REPO_DIR (else the
# submission dir), PROCESSES_PER_NODE (CPU nodes only; default 1).
# Preemption or the time limit: USR1 two minutes early -> checkpoint -> requeue -> resume (same job id).
#SBATCH --job-name=rotation
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
source "${REPO_DIR:-${SLURM_SUBMIT_DIR:-.}}/slurm/launch.sh" train_rotation.py "$@"
