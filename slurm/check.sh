#!/usr/bin/env bash
# Can Slurm start this job here at all? Put it before the sbatch command line you mean to submit:
#   bash slurm/check.sh [sbatch options] slurm/rotation.sh [training options]
#   bash slurm/check.sh --gpus-per-node=0 slurm/rotation.sh      # e.g. on CPU nodes: says which options to add
# A job that asks each node for more CPUs, memory or GPUs than the partition's nodes have never starts: sbatch
# refuses it, or (too many CPUs) accepts it and it pends forever with reason PartitionConfig, and neither says
# what to change. This script asks `sbatch --test-only` (nothing is submitted); where Slurm cannot start the job,
# it compares what the job asks of a node (the template's #SBATCH lines, then the options given) with the
# partition's nodes (sinfo) and prints the options that fit them. Exit status: 0 Slurm can start the job, 1 it
# cannot, 2 usage.
set -uo pipefail

say() { echo "slurm/check.sh: $*"; }
template=""
for arg in "$@"; do
    [[ $arg == *.sh && -f $arg ]] && { template=$arg; break; }
done
if [ -z "$template" ]; then
    say "usage: bash slurm/check.sh [sbatch options] slurm/rotation.sh [training options]" >&2
    exit 2
fi
command -v sbatch >/dev/null || { say "no sbatch on PATH: run it where you submit jobs" >&2; exit 2; }

# sbatch's last line without its prefix: the start estimate, or why it refuses
last_line() { tail -n 1 <<<"$1" | sed -E 's/^(sbatch: )?(error: )?//'; }
test_output=$(sbatch --test-only "$@" 2>&1)
if [ $? -eq 0 ]; then
    say "Slurm can start this job ($(last_line "$test_output"))"
    exit 0
fi
refused=$(last_line "$test_output")

# What the job asks of each node: the template's #SBATCH lines, then the options before its name (later wins).
nodes=1 tasks=1 cpus=1 mem="" gpus=0 partition=""
options=()
while read -r line; do options+=("$line"); done < <(sed -n 's/^#SBATCH[[:space:]]\+//p' "$template")
before=()
for arg in "$@"; do [ "$arg" = "$template" ] && break; before+=("$arg"); done
options+=("${before[@]}")
for ((i = 0; i < ${#options[@]}; i++)); do
    opt=${options[i]} value=""
    case $opt in
        --*=*) value=${opt#*=} opt=${opt%%=*} ;;
        -N | -c | -p | --nodes | --ntasks-per-node | --cpus-per-task | --mem | --gpus-per-node | --partition)
            value=${options[i + 1]:-}; i=$((i + 1)) ;;
    esac
    case $opt in
        -N | --nodes) nodes=${value%%-*} ;;  # a range: its minimum
        --ntasks-per-node) tasks=$value ;;
        -c | --cpus-per-task) cpus=$value ;;
        --mem) mem=$value ;;
        --gpus-per-node) gpus=${value##*:} ;;  # [type:]count
        -p | --partition) partition=${value%%,*} ;;
    esac
done
[ -n "$partition" ] || partition=$(sinfo -h -o '%P' | sed -n 's/\*$//p' | head -n 1)
mem_mb() {  # Slurm's sizes (default unit M) in MB; 0 (all of a node's memory) and none ask for nothing
    local n=${1%[KkMmGgTt]}
    case ${1: -1} in
        K | k) echo $((n / 1024)) ;;
        G | g) echo $((n * 1024)) ;;
        T | t) echo $((n * 1024 * 1024)) ;;
        *) echo "${n:-0}" ;;
    esac
}
need_cpus=$((cpus * tasks)) need_mem=$(mem_mb "$mem") need_gpus=$gpus

# The partition's nodes: CPUs, memory (MB), GPUs (from Gres such as gpu:8 or gpu:h100:8(S:0-1)); for each, what the
# nodes-th best node has (what a job of that many nodes can get on every one of them).
node_table=$(sinfo -h -N -p "$partition" -o '%N %c %m %G' 2>/dev/null | sort -u \
    | awk '{g = 0; n = split($4, r, ","); for (i = 1; i <= n; i++) if (r[i] ~ /^gpu/) { sub(/\(.*/, "", r[i]);
            k = split(r[i], f, ":"); g += f[k] } print $2, $3, g}')
count=$(grep -c . <<<"$node_table")
if ((count == 0)); then
    say "Slurm cannot start this job ($refused) and partition '$partition' has no nodes sinfo can show"
    exit 1
fi
nth() { awk -v c="$1" '{print $c}' <<<"$node_table" | sort -rn | sed -n "$(( nodes < count ? nodes : count ))p"; }
have_cpus=$(nth 1) have_mem=$(nth 2) have_gpus=$(nth 3)

add=()
((nodes <= count)) || add+=(--nodes="$count")
((need_gpus <= have_gpus)) || add+=(--gpus-per-node="$have_gpus")
((need_cpus <= have_cpus)) || add+=(--cpus-per-task=$((have_cpus / tasks > 0 ? have_cpus / tasks : 1)))
((need_mem <= have_mem)) || add+=(--mem="${have_mem}M")
if ((${#add[@]} == 0)); then
    say "Slurm cannot start this job ($refused), though the nodes of partition $partition have the CPUs, memory" \
        "and GPUs it asks for: see the message"
    exit 1
fi
best=$((nodes < count ? nodes : count))
say "Slurm cannot start this job ($refused): it asks $nodes node(s) of partition $partition for $need_cpus CPUs," \
    "${mem:-no} memory and $need_gpus GPUs each; the partition has $count node(s), the best $best with $have_cpus" \
    "CPUs, ${have_mem}M and $have_gpus GPUs"
# The same command with them: sbatch --test-only says whether that is enough.
if retest=$(sbatch --test-only "${before[@]}" "${add[@]}" "${@:${#before[@]}+1}" 2>&1); then
    say "add before the template: ${add[*]} (sbatch --test-only accepts the job with them)"
else
    say "add before the template: ${add[*]} (sbatch --test-only still refuses it with them: $(last_line "$retest"))"
fi
exit 1
