#!/usr/bin/env bash
# A one-node Slurm cluster (Debian's slurm-wlm 22.05 and munge) inside a private network namespace,
# for tests and for trying the Slurm templates on one machine. Needs root. Everything it makes lives
# in DIR (config, keys, state, logs) and in the namespace; nothing binds the host's interfaces.
#   scripts/slurm-cluster.sh start DIR      start munged, slurmctld and slurmd; wait until the node is idle
#   scripts/slurm-cluster.sh exec DIR CMD   run CMD in the namespace with SLURM_CONF set (sbatch, squeue, ...)
#   scripts/slurm-cluster.sh stop DIR       stop the daemons and delete the namespace
set -euo pipefail
command=${1:?usage: slurm-cluster.sh start|exec|stop DIR [CMD...]}
dir=${2:?usage: slurm-cluster.sh start|exec|stop DIR [CMD...]}
shift 2
mkdir -p "$dir"
dir=$(realpath "$dir")
ns_file="$dir/netns"

in_ns() { ip netns exec "$(cat "$ns_file")" env SLURM_CONF="$dir/slurm.conf" "$@"; }

start() {
    for tool in ip munged slurmctld slurmd sinfo; do
        command -v "$tool" >/dev/null || { echo "$tool is missing: run \`make setup\` (Debian's slurm-wlm, munge, iproute2)" >&2; exit 1; }
    done
    [ "$(id -u)" = 0 ] || { echo "the test cluster needs root (network namespace, slurmd)" >&2; exit 1; }
    local ns="padim-slurm-$$" host
    host=$(hostname -s)
    echo "$ns" >"$ns_file"
    ip netns add "$ns"
    ip netns exec "$ns" ip link set lo up
    # The daemons bind 0.0.0.0: inside the namespace that is lo and one veth end with a documentation
    # address (192.0.2.0/24); the host's end stays down, so nothing crosses to the host's network.
    local veth="pds$$"
    ip link add "${veth}h" type veth peer name "${veth}n"
    ip link set "${veth}n" netns "$ns"
    ip netns exec "$ns" ip addr add 192.0.2.10/32 dev "${veth}n"
    ip netns exec "$ns" ip link set "${veth}n" up

    mkdir -p "$dir/state" "$dir/spool" "$dir/log" "$dir/munge"
    chmod 700 "$dir/munge"
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
    local memory cpus
    memory=$(awk '/MemTotal/ { print int($2 / 1024 * 0.8) }' /proc/meminfo)
    cpus=$(nproc)
    cat >"$dir/slurm.conf" <<CONF
ClusterName=padim-test
SlurmctldHost=$host(192.0.2.10)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=$host NodeAddr=192.0.2.10 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=2048
CONF
    cat >"$dir/cgroup.conf" <<CONF
CgroupPlugin=cgroup/v1
IgnoreSystemd=yes
CONF
    ip netns exec "$ns" munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munge.seed"
    in_ns slurmctld -i
    in_ns slurmd
    for _ in $(seq 1 150); do
        if in_ns sinfo -h -o %T 2>/dev/null | grep -qx idle; then
            return 0
        fi
        sleep 0.2
    done
    echo "the test cluster did not come up; logs in $dir/log" >&2
    tail -n 20 "$dir"/log/*.log >&2 || true
    exit 1
}

stop() {
    [ -f "$ns_file" ] || return 0
    for pid_file in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
        if [ -f "$pid_file" ]; then
            kill "$(cat "$pid_file")" 2>/dev/null || true
        fi
    done
    sleep 0.5
    # Any job step still running in the namespace goes with it.
    ip netns pids "$(cat "$ns_file")" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$(cat "$ns_file")" 2>/dev/null || true
    rm -f "$ns_file"
}

case "$command" in
    start) start ;;
    stop) stop ;;
    exec) in_ns "$@" ;;
    *) echo "usage: slurm-cluster.sh start|exec|stop DIR [CMD...]" >&2; exit 2 ;;
esac
