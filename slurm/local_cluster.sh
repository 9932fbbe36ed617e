#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for tests and CI: local_cluster.sh up | down | status
# Installs Debian's munge, slurmctld, slurmd and slurm-client when missing (root, apt-get), writes a
# slurm.conf with this node's real CPU count and memory and no GPUs, and starts the daemons.
set -euo pipefail
ETC=/etc/slurm
STATE=/var/lib/slurm-local

install() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null && return
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq munge slurmctld slurmd slurm-client >/dev/null
}

up() {
    install
    down >/dev/null 2>&1 || true
    mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge $ETC "$STATE"/{ctld,d} /var/log/slurm
    chown -R munge:munge /etc/munge /var/log/munge /run/munge /var/lib/munge 2>/dev/null || true
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    runuser -u munge -- munged --force 2>/dev/null || munged --force
    local host node
    host=$(hostname -s)
    node=$(slurmd -C | head -n 1 | sed 's/ UpTime=.*//')   # NodeName=... CPUs=... RealMemory=...
    cat > $ETC/slurm.conf <<CONF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
MpiDefault=none
$node State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
    slurmctld -i
    slurmd
    for _ in $(seq 60); do
        sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && { sinfo; return 0; }
        sleep 0.5
    done
    echo "local_cluster: the node did not become idle; see /var/log/slurm/*.log" >&2
    return 1
}

down() {
    pkill -x slurmd || true
    pkill -x slurmctld || true
    pkill -x munged || true
    sleep 0.5
    rm -rf "$STATE"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) sinfo ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
