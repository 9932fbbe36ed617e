#!/usr/bin/env bash
# Runs once on every node of the job (an srun task started by slurm/launch.sh): `accelerate launch` of this
# node's processes. Reads SLURM_NNODES, SLURM_NODEID (here, on the node itself: accelerate issue #2816 is
# evaluating it in the batch shell, where every node would get 0), SLURM_GPUS_ON_NODE, and
# MAIN_PROCESS_IP / MAIN_PROCESS_PORT from launch.sh.
#   bash slurm/node.sh train_rotation.py [training options]
set -euo pipefail
script=$1
shift
gpus=${SLURM_GPUS_ON_NODE:-0}
if [ "$gpus" -gt 0 ]; then
    config=accelerate_configs/multi_gpu.yaml  # NCCL, bf16
    per_node=$gpus
else
    config=accelerate_configs/cpu.yaml  # no GPU on this node: gloo, on the CPU
    per_node=${PROCESSES_PER_NODE:-1}
fi
# accelerate launch and torchrun do not forward USR1 and would die of it: they inherit "ignore" from here,
# while the training processes install their own handler (checkpoint at the next step, then exit).
trap '' USR1
exec accelerate launch --config_file "$config" \
    --num_machines "$SLURM_NNODES" --machine_rank "$SLURM_NODEID" \
    --main_process_ip "$MAIN_PROCESS_IP" --main_process_port "$MAIN_PROCESS_PORT" \
    --num_processes $((SLURM_NNODES * per_node)) "$script" "$@"
