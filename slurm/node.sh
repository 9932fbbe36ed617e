#!/usr/bin/env bash
# Runs once on every node of the job (an srun task started by slurm/launch.sh): `accelerate launch` of this
# node's processes. Reads SLURM_NNODES, SLURM_NODEID (here, on the node itself: accelerate issue #2816 is
# evaluating it in the batch shell, where every node would get 0), SLURM_GPUS_ON_NODE, SLURM_CPUS_PER_TASK
# (the CPUs srun gave this task: shared out as threads per process), and MAIN_PROCESS_IP / MAIN_PROCESS_PORT
# from launch.sh (required with several nodes).
#   bash slurm/node.sh train_rotation.py [training options]
# It prints what this node got from Slurm and the `accelerate launch` command it runs. DRY_RUN=1 (e.g.
# `DRY_RUN=1 sbatch ... slurm/rotation.sh ...`; sbatch passes the environment on): exit there, train nothing.
set -euo pipefail
script=$1
shift
nnodes=${SLURM_NNODES:-1}
node_rank=${SLURM_NODEID:-0}
gpus=${SLURM_GPUS_ON_NODE:-0}
if [ "$gpus" -gt 0 ]; then
    per_node=$gpus
    if [ "$nnodes" -gt 1 ]; then
        config=accelerate_configs/multi_node.yaml  # NCCL, bf16, no default main process address
    else
        config=accelerate_configs/multi_gpu.yaml  # NCCL, bf16
    fi
else
    config=accelerate_configs/cpu.yaml  # no GPU on this node: gloo, on the CPU
    per_node=${PROCESSES_PER_NODE:-1}
fi
command=(accelerate launch --config_file "$config" --num_machines "$nnodes" --machine_rank "$node_rank"
         --num_processes $((nnodes * per_node)))
if [ "$nnodes" -gt 1 ] && { [ -z "${MAIN_PROCESS_IP:-}" ] || [ -z "${MAIN_PROCESS_PORT:-}" ]; }; then
    # accelerate launch 1.15 does not check this: without --main_process_ip it hands torchrun the host "None"
    # and retries it for many minutes; a 127.0.0.1 default made every node rendezvous with itself and hang.
    echo "slurm/node.sh: a $nnodes-node launch needs MAIN_PROCESS_IP and MAIN_PROCESS_PORT (the first node's" \
         "address and a free port; slurm/launch.sh sets both): not starting" >&2
    exit 2
fi
[ -z "${MAIN_PROCESS_IP:-}" ] || command+=(--main_process_ip "$MAIN_PROCESS_IP")
[ -z "${MAIN_PROCESS_PORT:-}" ] || command+=(--main_process_port "$MAIN_PROCESS_PORT")
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then  # OMP threads: this node's CPUs shared out (accelerate would count
    threads=$((SLURM_CPUS_PER_TASK / per_node))  # the whole machine's cores on CPU nodes, and use 1 on GPU ones)
    command+=(--num_cpu_threads_per_process $((threads > 0 ? threads : 1)))
fi
command+=("$script" "$@")

node=${SLURMD_NODENAME:-$(hostname -s)}
if ! accelerate=$(command -v accelerate); then
    echo "slurm/node.sh: no accelerate on PATH on node $node: submit from a shell where it is (sbatch copies" \
         "that environment unless --export says otherwise), or set SETUP_ENV to a file that puts it there" \
         "(see slurm/train.sh)" >&2
    exit 2
fi
echo "node $node: accelerate is $accelerate"
echo "node $node (SLURM_NODEID=$node_rank SLURM_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-}" \
     "SLURM_GPUS_ON_NODE=${SLURM_GPUS_ON_NODE:-} CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-}" \
     "SLURM_MEM_PER_NODE=${SLURM_MEM_PER_NODE:-} SLURM_MEM_PER_GPU=${SLURM_MEM_PER_GPU:-}): ${command[*]}"
if [ "${DRY_RUN:-0}" != 0 ]; then
    echo "node $node: dry run (DRY_RUN=$DRY_RUN), not started"
    exit 0
fi
# The stop notice (USR1 from launch.sh, to this srun task) must reach the training processes, but torchrun
# starts them in sessions of their own: a Slurm that signals the task's process group (ProctrackType=
# proctrack/pgid) misses them. So a forwarder, started here and left behind by the exec below, sends each USR1
# it gets to the launcher's descendants that catch USR1: the training processes (with their handler installed),
# whatever the proctrack, and never a process that USR1 would kill (default action) or that ignores it. Where
# Slurm signals every process of the step (linuxproc, cgroup) they get it twice: their handler only notes it.
launcher=$$  # the exec below keeps this pid
usr1=$(kill -l USR1)
ppid_of() { local line fields; read -r line 2>/dev/null <"/proc/$1/stat" || return 1; fields=(${line##*) }); echo "${fields[1]}"; }
forward_usr1() {
    local -A children=()
    local stat line fields pid key value queue targets=()
    for stat in /proc/[0-9]*/stat; do  # pid -> children, from each process's parent (after "(comm) ": state, ppid)
        read -r line 2>/dev/null <"$stat" || continue
        fields=(${line##*) })
        pid=${stat#/proc/}
        children[${fields[1]}]+=" ${pid%/stat}"
    done
    queue=(${children[$launcher]:-})
    while ((${#queue[@]})); do
        pid=${queue[0]}
        queue=("${queue[@]:1}")
        [ "$pid" != "$forwarder" ] || continue  # not this forwarder, nor its sleep
        queue+=(${children[$pid]:-})
        value=0
        while read -r key value; do [ "$key" != SigCgt: ] || break; done 2>/dev/null <"/proc/$pid/status" || continue
        if (((16#${value:-0} >> (usr1 - 1)) & 1)); then targets+=("$pid"); fi
    done
    if ((${#targets[@]})); then
        kill -USR1 "${targets[@]}" 2>/dev/null || true
        echo "node $node: SIGUSR1 forwarded to the training processes (pids ${targets[*]})"
    else
        echo "node $node: SIGUSR1 not forwarded: no training process catches it yet"
    fi
}
(
    forwarder=$BASHPID
    trap forward_usr1 USR1
    while [ "$(ppid_of "$forwarder")" = "$launcher" ]; do  # until the launcher has exited
        sleep 1 &
        wait $! || true  # a USR1 interrupts the wait: the trap runs at once
    done
) &
# accelerate launch and torchrun do not forward USR1 and would die of it: they inherit "ignore" from here,
# while the training processes install their own handler (checkpoint at the next step, then exit).
trap '' USR1
exec "${command[@]}"
