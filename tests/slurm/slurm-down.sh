#!/usr/bin/env bash
# Stop the one-node test cluster started by slurm-up.sh: slurmd, slurmctld and (unless --keep-munge) munged.
# Processes are found through their pidfiles only, so nothing else on the machine is touched.
# Safe to run when nothing is running.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

KEEP_MUNGE=0
if [[ "${1:-}" == "--keep-munge" ]]; then
    KEEP_MUNGE=1
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--keep-munge]" >&2
    exit 2
fi
TIMEOUT="${LEGAMPI_SLURM_TIMEOUT:-60}"

# proc_running PID NAME: true if PID is a live (non-zombie) process whose command name is NAME.
# Zombies count as gone: PID 1 on some CI VMs reaps orphans late, and kill -0 succeeds on a zombie.
proc_running() {
    local pid=$1 name=$2 stat
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ "${stat%% *}" != Z ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]
}

# stop_pidfile NAME PIDFILE: SIGTERM the process named in PIDFILE and wait (bounded) until it is gone.
stop_pidfile() {
    local name=$1 pidfile=$2 pid
    if [[ ! -s "$pidfile" ]]; then
        return 0
    fi
    pid="$(cat "$pidfile")"
    if ! proc_running "$pid" "$name"; then
        rm -f "$pidfile"
        return 0
    fi
    echo "slurm-down: stopping $name (pid $pid)"
    kill -TERM "$pid"
    local deadline=$((SECONDS + TIMEOUT))
    while proc_running "$pid" "$name"; do
        if ((SECONDS >= deadline)); then
            echo "slurm-down: ERROR: $name (pid $pid) still running ${TIMEOUT}s after SIGTERM" >&2
            exit 1
        fi
        sleep 0.2
    done
    rm -f "$pidfile"
}

stop_pidfile slurmd /run/slurm/slurmd.pid
stop_pidfile slurmctld /run/slurm/slurmctld.pid
if ((KEEP_MUNGE == 0)); then
    stop_pidfile munged /run/munge/munged.pid
fi
