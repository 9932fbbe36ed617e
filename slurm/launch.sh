# Sourced by slurm/train.sh (slurm/rotation.sh, slurm/siamese.sh): `source slurm/launch.sh SCRIPT [training options]`.
#
# One srun task per node, with all the job's CPUs on that node, runs slurm/node.sh, which starts
# `accelerate launch` for that node's processes (DRY_RUN=1: prints that command instead).
# Preemption and time limits: Slurm sends USR1 to this batch shell (--signal=B:USR1@...); we pass it to the
# training processes (scancel --signal=USR1 to the job steps), they checkpoint at the next step boundary and
# exit, and this script requeues the job, which resumes from that checkpoint in the same output dir (and the
# same W&B run: its id is stored there). A job that finished (results.json written) is not requeued.
# The notice is --signal's 120 s (Slurm may send it up to 60 s earlier); at the time limit Slurm kills the job and
# nothing requeues it. So the wait for the training to stop is at most STOP_GRACE_S (default 90) seconds: then the
# job is requeued anyway, and resumes from the newest complete checkpoint (they are written atomically).
set -uo pipefail
script=$1
shift
cd "${REPO_DIR:-${SLURM_SUBMIT_DIR:-.}}" || exit 2

# The output dir must be the same after a requeue: --output-dir if given, else $OUTPUT_DIR, else
# runs/<job name>-<job id> (a requeued job keeps its id; the name without the template's .sh).
args=("$@")
output_dir=""
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --output-dir) output_dir=${args[i + 1]:-} ;;
        --output-dir=*) output_dir=${args[i]#*=} ;;
    esac
done
if [ -z "$output_dir" ]; then
    job_name=${SLURM_JOB_NAME:-job}
    output_dir=${OUTPUT_DIR:-runs/${job_name%.sh}-${SLURM_JOB_ID}}
    args+=(--output-dir "$output_dir")
fi

MAIN_PROCESS_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)  # rendezvous on the first node
# 10000-29499: below Linux's ephemeral ports (32768-60999 by default, /proc/sys/net/ipv4/ip_local_port_range),
# which outgoing connections take at random, and below torchrun's default 29500; derived from the job id, so
# two jobs sharing a node get different ports (unless their ids differ by a multiple of 19500).
MAIN_PROCESS_PORT=$((10000 + SLURM_JOB_ID % 19500))
export MAIN_PROCESS_IP MAIN_PROCESS_PORT
echo "job $SLURM_JOB_ID on $SLURM_JOB_NUM_NODES node(s) ($SLURM_JOB_NODELIST), SLURM_RESTART_COUNT=${SLURM_RESTART_COUNT:-0}," \
     "main process $MAIN_PROCESS_IP:$MAIN_PROCESS_PORT, output dir $output_dir"

# srun does not inherit the job's --cpus-per-task (Slurm 22.05+): without it, a step task gets one CPU, and all
# the processes of a node share it where Slurm binds tasks to CPUs. Give the one task per node every CPU the
# job has on a node: SLURM_JOB_CPUS_PER_NODE is e.g. "64(x2)" or "64,32(x3)"; the smallest fits every node.
cpus_per_node=$(tr , '\n' <<<"${SLURM_JOB_CPUS_PER_NODE:-1}" | sed 's/(.*//' | sort -n | head -n 1)
# The steps get this shell's environment (SETUP_ENV's doing included): sbatch --export=NONE or =VAR,... would
# otherwise be passed on to them through SLURM_EXPORT_ENV (they then find no bash, no python on PATH).
export SLURM_EXPORT_ENV=ALL
srun_command=(srun --ntasks-per-node=1 --cpus-per-task="$cpus_per_node" bash slurm/node.sh "$script" "${args[@]}")
echo "${srun_command[*]}"

STOP_GRACE_S=${STOP_GRACE_S:-90}
stop_signal=""
stop_at=0
forward_stop() {
    echo "batch script got SIG$1: asking the training to checkpoint and stop"
    [ -n "$stop_signal" ] || stop_at=$SECONDS  # the grace period runs from the first signal
    stop_signal=$1
    scancel --signal=USR1 "$SLURM_JOB_ID"  # to the job steps (not this batch shell)
}
trap 'forward_stop USR1' USR1
trap 'forward_stop TERM' TERM

"${srun_command[@]}" &
step=$!
while :; do
    if [ -z "$stop_signal" ]; then
        wait "$step"  # a trapped signal interrupts it: the loop then waits again, at most the grace period
        status=$?
    elif ((SECONDS - stop_at >= STOP_GRACE_S)); then
        echo "the training did not stop within STOP_GRACE_S=$STOP_GRACE_S s of SIG$stop_signal: requeueing job" \
             "$SLURM_JOB_ID anyway; it resumes from the newest complete checkpoint in $output_dir"
        scontrol requeue "$SLURM_JOB_ID"
        exit 0
    else
        sleep 1
    fi
    kill -0 "$step" 2>/dev/null || { wait "$step"; status=$?; break; }
done

if [ -n "$stop_signal" ] && [ ! -f "$output_dir/results.json" ]; then
    echo "requeueing job $SLURM_JOB_ID: it resumes from the newest checkpoint in $output_dir"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
exit "$status"
