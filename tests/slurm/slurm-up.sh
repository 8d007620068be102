#!/usr/bin/env bash
# Bring up a one-node Slurm cluster (munged + slurmctld + slurmd) on this machine for tests.
# Idempotent: safe to run when the cluster is already up. Needs root. No systemd required.
# Debian's slurm packages (22.05) are installed if missing.
#
# Environment knobs (all optional):
#   SLURM_CONF            where to write slurm.conf (default /etc/slurm/slurm.conf)
#   LEGAMPI_SLURM_CPUS    CPUs advertised for the node (default 8; slurmd uses config_overrides)
#   LEGAMPI_SLURM_MEM_MB  RealMemory of the node in MB (default 2048)
#   LEGAMPI_SLURM_TIMEOUT seconds to wait for each daemon/node state (default 60)
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

SLURM_CONF="${SLURM_CONF:-/etc/slurm/slurm.conf}"
export SLURM_CONF
CPUS="${LEGAMPI_SLURM_CPUS:-8}"
MEM_MB="${LEGAMPI_SLURM_MEM_MB:-2048}"
TIMEOUT="${LEGAMPI_SLURM_TIMEOUT:-60}"
MARKER="# Managed by legampi tests/slurm/slurm-up.sh -- overwritten on every run."
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
CTLD_LOG="$LOG_DIR/slurmctld.log"
SLURMD_LOG="$LOG_DIR/slurmd.log"
CTLD_PID="$RUN_DIR/slurmctld.pid"
SLURMD_PID="$RUN_DIR/slurmd.pid"
MUNGE_PID=/run/munge/munged.pid

die() {
    echo "slurm-up: ERROR: $*" >&2
    for f in /var/log/munge/munged.log "$CTLD_LOG" "$SLURMD_LOG"; do
        if [[ -f "$f" ]]; then
            echo "----- last lines of $f -----" >&2
            tail -n 40 "$f" >&2
        fi
    done
    exit 1
}

# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s until it succeeds or time runs out.
wait_for() {
    local limit=$1 what=$2
    shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            die "timed out after ${limit}s waiting for: $what"
        fi
        sleep 0.2
    done
}

# proc_running PID NAME: true if PID is a live (non-zombie) process whose command name is NAME.
# Zombies count as gone: PID 1 on some CI VMs reaps orphans late, and kill -0 succeeds on a zombie.
proc_running() {
    local pid=$1 name=$2 stat
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"
    [[ "${stat%% *}" != Z ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]
}

# pid_alive PIDFILE NAME: true if the pidfile names a running NAME process.
pid_alive() {
    [[ -s "$1" ]] && proc_running "$(cat "$1")" "$2"
}

[[ $(id -u) -eq 0 ]] || die "must run as root (starts munged/slurmctld/slurmd)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    echo "slurm-up: installing Debian slurm packages"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y slurmctld slurmd slurm-client munge
fi

# ---------------------------------------------------------------- munge
install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    echo "slurm-up: creating /etc/munge/munge.key"
    runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

munge_ok() { munge -n | unmunge; }
if ! munge_ok >/dev/null 2>&1; then
    if pid_alive "$MUNGE_PID" munged; then
        die "munged (pid $(cat "$MUNGE_PID")) is running but 'munge -n | unmunge' fails"
    fi
    # A stale pidfile or socket from a killed munged makes a new one refuse to start.
    rm -f "$MUNGE_PID" /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    echo "slurm-up: starting munged"
    runuser -u munge -- /usr/sbin/munged || die "munged failed to start"
    wait_for "$TIMEOUT" "munge -n | unmunge" munge_ok
fi

# ---------------------------------------------------------------- slurm.conf
HOST="$(hostname -s)"
install -d -m 0755 "$(dirname "$SLURM_CONF")" "$LOG_DIR" "$RUN_DIR"
install -d -m 0755 "$STATE_DIR" "$SPOOL_DIR"

if [[ -e "$SLURM_CONF" ]] && ! head -n 1 "$SLURM_CONF" | grep -qF "$MARKER"; then
    die "$SLURM_CONF exists and was not written by this script; refusing to overwrite it" \
        "(set SLURM_CONF to another path)"
fi

NEW_CONF="$(mktemp)"
trap 'rm -f "$NEW_CONF"' EXIT
cat >"$NEW_CONF" <<EOF
$MARKER
ClusterName=legampi-ci
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=pmi2
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=${STATE_DIR}
SlurmdSpoolDir=${SPOOL_DIR}
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${CTLD_LOG}
SlurmdLogFile=${SLURMD_LOG}
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=6817
SlurmdPort=6818
# Short timeouts so a broken test cluster fails fast instead of hanging CI.
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=${HOST} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

conf_changed=0
if ! cmp -s "$NEW_CONF" "$SLURM_CONF"; then
    conf_changed=1
    install -m 0644 "$NEW_CONF" "$SLURM_CONF"
fi

# The daemons read slurm.conf only at start: restart them if the config changed under them.
if ((conf_changed)) && { pid_alive "$CTLD_PID" slurmctld || pid_alive "$SLURMD_PID" slurmd; }; then
    echo "slurm-up: $SLURM_CONF changed; restarting the slurm daemons"
    "$(dirname "$0")/slurm-down.sh" --keep-munge
fi

# ---------------------------------------------------------------- daemons
if ! pid_alive "$CTLD_PID" slurmctld; then
    echo "slurm-up: starting slurmctld"
    rm -f "$CTLD_PID"
    slurmctld -f "$SLURM_CONF" || die "slurmctld failed to start"
fi
wait_for "$TIMEOUT" "slurmctld to answer 'scontrol ping'" \
    bash -c 'scontrol ping | grep -q "is UP"'

if ! pid_alive "$SLURMD_PID" slurmd; then
    echo "slurm-up: starting slurmd"
    rm -f "$SLURMD_PID"
    slurmd -f "$SLURM_CONF" || die "slurmd failed to start"
fi

node_state() { sinfo -h -N -n "$HOST" -o '%T'; }
node_idle() { [[ "$(node_state)" =~ ^(idle|mixed|allocated)$ ]]; }
node_needs_resume() { [[ "$(node_state)" =~ ^(down|drain|drained|draining|fail) ]]; }

deadline=$((SECONDS + TIMEOUT))
until node_idle; do
    if node_needs_resume; then
        # A node left DOWN/DRAINED by an earlier run (e.g. after a restart) stays so until resumed.
        scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 \
            || scontrol update nodename="$HOST" state=idle >/dev/null 2>&1 \
            || echo "slurm-up: could not resume node $HOST (state $(node_state)); retrying" >&2
    fi
    if ((SECONDS >= deadline)); then
        sinfo -N -l >&2 || echo "slurm-up: sinfo failed as well" >&2
        die "node $HOST never became idle (last state: '$(node_state)')"
    fi
    sleep 0.2
done

echo "slurm-up: cluster legampi-ci up (node $HOST: $(node_state), SLURM_CONF=$SLURM_CONF)"
