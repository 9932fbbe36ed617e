#!/usr/bin/env bash
# A real Slurm cluster on this one machine, for tests and CI:  local_cluster.sh up [NODES] | down | status
#
# Debian's Slurm (22.05) runs several slurmd daemons per host, so `up` starts one slurmctld and 2 x NODES slurmd
# (NODES: the argument, else $NODES, else 2):
#   partition `debug` (default): n0 .. n<NODES-1>, this machine's CPUs and memory shared out between them
#       (CPUs=1 each on a 2-core machine), no GPUs. The templates' CPU-only jobs run here, on one or more nodes.
#   partition `fakegpu`: g0 .. g<NODES-1>, each declared as a typical 8-GPU node (Gres=gpu:8 with /dev/null
#       behind them, 96 CPUs, 1000 GiB; SlurmdParameters=config_overrides lets a slurmd claim more than the machine
#       has). Only for dry runs (DRY_RUN=1, see slurm/node.sh): it shows what Slurm allocates to a multi-node
#       GPU job and the commands each node would run; nothing that needs a GPU can run there.
# All nodes listen on 127.0.0.1 (Port 17001, 17002, ...); their names go to /etc/hosts (a line marked
# "local_cluster.sh", removed by `down`) because the first node's name is the rendezvous address.
# Clients use the default config, /etc/slurm/slurm.conf (SLURM_CONF is unset for them): a client with
# another config gets "can't find address for host".
# PROCTRACK (default linuxproc): Slurm's ProctrackType, proctrack/$PROCTRACK. linuxproc finds a step's processes
# through their parents, as cgroup finds them in its cgroup; pgid signals only the task's process group, which
# torchrun's workers (sessions of their own) are not in. The cluster is restarted when it changes.
# A requeued job waits cred_expire + 1 s before it may start again: 10 s here (Slurm's default, 120 s, is the
# "about two minutes" a preemption test would otherwise wait).
# Needs root. Installs munge, slurmctld, slurmd and slurm-client when missing (apt-get, Debian/Ubuntu): run it
# yourself, or let .ci/run do it; tests/test_slurm.py never does (it skips without a cluster). `up` is
# idempotent (a running cluster with the same config is left alone); `down` cancels every job, waits for it to
# end (killing the daemons would leave job processes alive), then stops the daemons and munged.
set -euo pipefail
unset SLURM_CONF
ETC=/etc/slurm
CONF=$ETC/slurm.conf
STATE=/var/lib/slurm-local
LOGS=/var/log/slurm
MARK="# written by slurm/local_cluster.sh"
HOSTS_MARK="# local_cluster.sh"

install() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && return
    command -v apt-get >/dev/null || {
        echo "local_cluster: Slurm (munge, slurmctld, slurmd, slurm-client) is not installed and there is" \
             "no apt-get to install it: install it with your package manager, then run this again" >&2
        exit 1
    }
    echo "local_cluster: installing munge, slurmctld, slurmd and slurm-client with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq munge slurmctld slurmd slurm-client >/dev/null
}

ours() {  # never touch a Slurm config (and its daemons) that this script did not write
    [ ! -e $CONF ] || head -n 1 $CONF | grep -qxF "$MARK" || {
        echo "local_cluster: $CONF was not written by this script; not touching that cluster" >&2
        exit 1
    }
}

node_names() {  # partition prefix, count -> "n0 n1 ..."
    local i
    for ((i = 0; i < $2; i++)); do printf '%s%d ' "$1" "$i"; done
}

write_conf() {  # nodes, proctrack -> slurm.conf and gres.conf contents on stdout (gres.conf after a line "---")
    local nodes=$1 proctrack=$2 host cpus mem i port
    host=$(hostname -s)
    read -r cpus mem < <(slurmd -C | head -n 1 | sed -E 's/.* CPUs=([0-9]+).* RealMemory=([0-9]+).*/\1 \2/')
    cpus=$((cpus / nodes > 0 ? cpus / nodes : 1))
    mem=$((mem * 9 / 10 / nodes))  # MB per node, a tenth left to the daemons
    cat <<CONF
$MARK
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/$proctrack
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
ReturnToService=2
JobRequeue=1
MpiDefault=none
CONF
    port=17001
    for i in $(node_names n "$nodes"); do
        echo "NodeName=$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((port++)) CPUs=$cpus RealMemory=$mem State=UNKNOWN"
    done
    for i in $(node_names g "$nodes"); do
        echo "NodeName=$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((port++)) Sockets=2 CoresPerSocket=48" \
             "ThreadsPerCore=1 RealMemory=1024000 Gres=gpu:8 State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=$(node_names n "$nodes" | xargs | tr ' ' ,) Default=YES MaxTime=INFINITE State=UP"
    echo "PartitionName=fakegpu Nodes=$(node_names g "$nodes" | xargs | tr ' ' ,) MaxTime=INFINITE State=UP"
    echo ---
    echo "$MARK"
    echo "# Not GPUs: links to /dev/null (22.05 drops a GPU without File=, and wants a device there). Dry runs only."
    echo "NodeName=g[0-$((nodes - 1))] Name=gpu File=$STATE/fakedev/nvidia[0-7]"
}

all_idle() {  # every node answers and is free
    local states
    states=$(sinfo -h -N -o %T 2>/dev/null) || return 1
    [ -n "$states" ] && ! grep -qvxE 'idle' <<<"$states"
}

up() {
    local nodes=${1:-${NODES:-2}} proctrack=${PROCTRACK:-linuxproc} wanted
    [[ $nodes =~ ^[1-9][0-9]?$ ]] || { echo "local_cluster: NODES must be a number from 1 to 99, not '$nodes'" >&2; exit 2; }
    [[ $proctrack =~ ^(linuxproc|pgid)$ ]] || {
        echo "local_cluster: PROCTRACK must be linuxproc or pgid (cgroup needs systemd or cgroup setup), not '$proctrack'" >&2
        exit 2
    }
    install
    ours
    wanted=$(write_conf "$nodes" "$proctrack")
    if [ "$(cat $CONF $ETC/gres.conf 2>/dev/null | sed '/^---$/d')" = "$(sed '/^---$/d' <<<"$wanted")" ] \
        && sinfo -h >/dev/null 2>&1; then
        echo "local_cluster: already up with this config"
        sinfo
        return 0
    fi
    down >/dev/null 2>&1 || true
    mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge $ETC "$STATE"/{ctld,d,fakedev} $LOGS
    for i in $(seq 0 7); do ln -sf /dev/null "$STATE/fakedev/nvidia$i"; done
    chown -R munge:munge /etc/munge /var/log/munge /run/munge /var/lib/munge 2>/dev/null || true
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    runuser -u munge -- munged --force 2>/dev/null || munged --force
    sed '/^---$/,$d' <<<"$wanted" > $CONF
    sed '1,/^---$/d' <<<"$wanted" > $ETC/gres.conf
    local names
    names=$(node_names n "$nodes")$(node_names g "$nodes")
    sed -i "/$HOSTS_MARK\$/d" /etc/hosts
    echo "127.0.0.1 $names $HOSTS_MARK" >> /etc/hosts
    slurmctld -i
    for name in $names; do slurmd -N "$name"; done
    for _ in $(seq 120); do
        all_idle && { sinfo; return 0; }
        sleep 0.5
    done
    sinfo -N >&2 || true
    echo "local_cluster: the nodes did not all become idle; see $LOGS/*.log" >&2
    return 1
}

stop_pidfile() {  # pidfile: SIGTERM the daemon it names, wait up to 5 s for it to exit
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

down() {
    ours
    local jobs
    if sinfo -h >/dev/null 2>&1; then
        jobs=$(squeue -h -o %A 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            # shellcheck disable=SC2086
            scancel $jobs || true
            for _ in $(seq 120); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
        fi
    fi
    for pidfile in "$STATE"/slurmd-*.pid "$STATE"/slurmctld.pid; do [ -e "$pidfile" ] && stop_pidfile "$pidfile"; done
    stop_pidfile /run/munge/munged.pid
    rm -rf "$STATE"
    sed -i "/$HOSTS_MARK\$/d" /etc/hosts
}

case "${1:-}" in
    up | down) [ "$(id -u)" -eq 0 ] || {
        echo "local_cluster: $1 needs root (it installs Slurm when missing, writes $ETC and /etc/hosts," \
             "starts and stops the daemons)" >&2
        exit 1
    } ;;&
    up) up "${2:-}" ;;
    down) down ;;
    status) sinfo -N -o "%N %P %T %c %m %G" ;;
    *) echo "usage: $0 up [NODES] | down | status" >&2; exit 2 ;;
esac
