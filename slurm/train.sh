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
# Python: the job runs `accelerate` and `python` from PATH. sbatch copies the submitting shell's environment by
# default (--export=ALL), so submit from a shell where `python train_rotation.py` works, or set SETUP_ENV.
# SETUP_ENV: a shell file sourced by the batch shell before anything else (default slurm/env.sh if that file
# exists; gitignored), e.g. `module load cuda/12.4` and `source /path/to/venv/bin/activate` (or
# `eval "$(conda shell.bash hook)"; conda activate ssl`); every node inherits what it sets, whatever --export.
#   SETUP_ENV=$HOME/ssl_env.sh sbatch slurm/rotation.sh ...
# Run outside a job (no SLURM_JOB_ID), this script only says how to submit it, and exits 2.
# Environment: OUTPUT_DIR (else runs/<job name without .sh>-<job id>, unless --output-dir is given), REPO_DIR (else the
# submission dir), PROCESSES_PER_NODE (CPU nodes only; default 1), DRY_RUN (see slurm/node.sh).
# Preemption or the time limit: USR1 two minutes early -> checkpoint -> requeue -> resume (same job id); the
# requeue comes at most STOP_GRACE_S (default 90) s after the signal, whether or not the training has stopped.
# Account and partition, if your cluster asks for them: delete one # of a line (##SBATCH is a comment to sbatch),
# or pass them to sbatch (sbatch --account=... --partition=... slurm/rotation.sh).
##SBATCH --account=YOUR_ACCOUNT
##SBATCH --partition=YOUR_GPU_PARTITION
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
if [ -z "${SLURM_JOB_ID:-}" ]; then  # e.g. `bash slurm/rotation.sh ...` on a login node: nothing to launch into
    task=$(basename "$0" .sh) args=${*:+ $(printf '%q ' "$@")}
    if [ -f "$(dirname "$0")/../train_$task.py" ]; then
        echo "$0 is a Slurm batch script: submit it with \`sbatch [sbatch options] $0${args% }\` (for a run on" \
             "this machine: python train_$task.py${args% })" >&2
    else
        echo "$0 is a Slurm batch script: submit slurm/rotation.sh or slurm/siamese.sh with sbatch (for a run on" \
             "this machine: python train_rotation.py or train_siamese.py)" >&2
    fi
    exit 2
fi
setup_env=${SETUP_ENV:-}
default_env=${REPO_DIR:-${SLURM_SUBMIT_DIR:-.}}/slurm/env.sh
[ -n "$setup_env" ] || [ ! -f "$default_env" ] || setup_env=$default_env
if [ -n "$setup_env" ]; then  # before anything: it may put the job's Python (and Slurm's tools) on PATH
    if [ ! -f "$setup_env" ]; then
        echo "error: SETUP_ENV=$setup_env: no such file (a path from $PWD): fix the path or unset SETUP_ENV" >&2
        exit 2
    fi
    source "$setup_env" || { echo "error: sourcing $setup_env failed (exit status $?): fix it" >&2; exit 2; }
fi
submitted=$(scontrol show job -o "$SLURM_JOB_ID" | sed -n 's/.* Command=\([^ ]*\).*/\1/p')
task=$(basename "${submitted:-train}" .sh)
if [ ! -f "${REPO_DIR:-${SLURM_SUBMIT_DIR:-.}}/train_$task.py" ]; then
    echo "error: submitted as ${submitted:-an unknown path}: submit slurm/<task>.sh (e.g. slurm/rotation.sh," \
         "slurm/siamese.sh), whose name says the task" >&2
    exit 2
fi
source "${REPO_DIR:-${SLURM_SUBMIT_DIR:-.}}/slurm/launch.sh" "train_$task.py" "$@"
