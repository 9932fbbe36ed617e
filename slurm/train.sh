#!/usr/bin/env bash
# Training on Slurm, one template under two names: slurm/rotation.sh (train_rotation.py) and slurm/siamese.sh
# (train_siamese.py) are links to this file, and the name a job was submitted under is its task (Slurm keeps the
# submitted path, scontrol's Command=, through requeues). Submit from the repository root:
#   sbatch slurm/rotation.sh [training options]          # or slurm/siamese.sh
#   sbatch --nodes=2 --partition=gpu --time=48:00:00 slurm/rotation.sh --model resnet18
#   sbatch --gpus-per-node=4 --cpus-per-task=32 --mem=240G slurm/rotation.sh --model resnet18    # 4 GPUs a node
#   sbatch --gpus-per-node=0 --cpus-per-task=4 --mem=16G slurm/rotation.sh --dataset synthetic --max-steps 30  # no GPU
#   DRY_RUN=1 sbatch --nodes=2 slurm/rotation.sh ...   # prints each node's `accelerate launch` command, trains nothing
# The job's name, unless --job-name is given, is the name submitted (rotation.sh). Defaults below: one node with
# 8 GPUs (bf16), 24 h, and per node 64 CPUs and 480 GB (8 CPUs and 60 GB per GPU; fits nodes sold as 512 GB). They are per node (the one task a node runs), not per GPU: scale
# --cpus-per-task and --mem with --gpus-per-node. Command-line sbatch options override these lines.
# Why not --cpus-per-gpu / --mem-per-gpu: Slurm 22.05 then refuses the GPU-less job on nodes without GPUs
# ("Requested node configuration is not available"), and nothing on the command line undoes them
# (--cpus-per-gpu=0 is invalid, --cpus-per-task and --mem are "mutually exclusive" with them).
# Without GPUs, pass --cpus-per-task and --mem that the nodes have, else the job pends (or is refused):
#   bash slurm/check.sh [sbatch options] slurm/rotation.sh   # says whether it can start, else what to add
# Environment: OUTPUT_DIR (else runs/<job name without .sh>-<job id>, unless --output-dir is given), REPO_DIR (else the
# submission dir), PROCESSES_PER_NODE (CPU nodes only; default 1), DRY_RUN (see slurm/node.sh).
# Preemption or the time limit: USR1 two minutes early -> checkpoint -> requeue -> resume (same job id); the
# requeue comes at most STOP_GRACE_S (default 90) s after the signal, whether or not the training has stopped.
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
submitted=$(scontrol show job -o "$SLURM_JOB_ID" | sed -n 's/.* Command=\([^ ]*\).*/\1/p')
task=$(basename "${submitted:-train}" .sh)
if [ ! -f "${REPO_DIR:-${SLURM_SUBMIT_DIR:-.}}/train_$task.py" ]; then
    echo "error: submitted as ${submitted:-an unknown path}: submit slurm/<task>.sh (e.g. slurm/rotation.sh," \
         "slurm/siamese.sh), whose name says the task" >&2
    exit 2
fi
source "${REPO_DIR:-${SLURM_SUBMIT_DIR:-.}}/slurm/launch.sh" "train_$task.py" "$@"
