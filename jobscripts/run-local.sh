#!/bin/bash
# legampi on a workstation or a single server without Slurm: monitor pass(es), then one MPI ingest job.
#
# Run:      jobscripts/run-local.sh /etc/legampi/legampi.ini [legampi process options]
#     or:   LEGAMPI_CONFIG=/etc/legampi/legampi.ini jobscripts/run-local.sh
# Example:  NP=5 PASSES=3 PASS_INTERVAL=60 jobscripts/run-local.sh legampi.ini --dataset EGAD0001
# From cron (every 10 minutes, one pass each; a file moves after pass_limit runs without change):
#   */10 * * * * flock -n /tmp/legampi.lock /opt/legampi/jobscripts/run-local.sh /etc/legampi/legampi.ini \
#                >>/var/log/legampi/run-local.log 2>&1
#
# Environment:
#   NP             MPI ranks (default 3: rank 0 coordinates, 2 ranks stream files; about one per core)
#   PASSES         monitor passes before ingesting (default 1; 0 skips the monitor)
#   PASS_INTERVAL  seconds between those passes (default 60)
#   MPIEXEC        the mpiexec to use (default: mpiexec on PATH, e.g. from the mpich wheel)
#   LEGAMPI_CONFIG, LEGAMPI_VENV, LEGAMPI, LEGAMPI_OPTS as in ingest.sbatch
# Logs go to this terminal (stderr: log lines; stdout: summaries), or to --log-file via LEGAMPI_OPTS.
# Stopping early: `kill -USR1 <pid of this script>` (or -TERM) is forwarded to mpiexec, which relays it
# to every rank; legampi then finishes the files in flight and releases the rest for the next run.
# Ctrl-C stops at once; the next run's recovery step releases the files that run had claimed.
# Exit status: the first non-zero of the monitor passes and the ingest job, else 0.
set -euo pipefail

die() { echo "run-local.sh: ERROR: $*" >&2; exit 2; }

CONFIG="${LEGAMPI_CONFIG:-}"
if [[ $# -gt 0 && "$1" != -* ]]; then
    CONFIG="$1"
    shift
fi
[[ -n "$CONFIG" ]] || die "no configuration: give it as the first argument or set LEGAMPI_CONFIG"
[[ -f "$CONFIG" && -r "$CONFIG" ]] || die "configuration file $CONFIG does not exist or is not readable"
CONFIG="$(realpath -- "$CONFIG")"
NP="${NP:-3}"
PASSES="${PASSES:-1}"
PASS_INTERVAL="${PASS_INTERVAL:-60}"
[[ "$NP" =~ ^[1-9][0-9]*$ ]] || die "NP must be a positive number of ranks, got '$NP'"
[[ "$PASSES" =~ ^[0-9]+$ ]] || die "PASSES must be a number, got '$PASSES'"
[[ "$PASS_INTERVAL" =~ ^[0-9]+$ ]] || die "PASS_INTERVAL must be a number of seconds, got '$PASS_INTERVAL'"

if [[ -n "${LEGAMPI_VENV:-}" ]]; then
    [[ -f "$LEGAMPI_VENV/bin/activate" ]] || die "LEGAMPI_VENV=$LEGAMPI_VENV has no bin/activate"
    # shellcheck disable=SC1091
    source "$LEGAMPI_VENV/bin/activate"
fi
LEGAMPI="${LEGAMPI:-legampi}"
MPIEXEC="${MPIEXEC:-mpiexec}"
command -v "$LEGAMPI" >/dev/null || die "legampi command '$LEGAMPI' not found (set LEGAMPI or LEGAMPI_VENV)"
command -v "$MPIEXEC" >/dev/null || die "'$MPIEXEC' not found (set MPIEXEC or LEGAMPI_VENV)"
read -r -a OPTS <<<"${LEGAMPI_OPTS:-}"

status=0
for ((pass = 1; pass <= PASSES; pass++)); do
    if ((pass > 1)); then
        sleep "$PASS_INTERVAL"  # the transfer monitor needs real time between passes to see a file is still
    fi
    rc=0
    "$LEGAMPI" "${OPTS[@]}" -c "$CONFIG" monitor || rc=$?
    if ((rc != 0)); then
        echo "run-local.sh: monitor pass $pass exited $rc" >&2
        ((status == 0)) && status=$rc
    fi
done

# mpiexec in the background so the trap runs at once (bash defers traps while a foreground command
# runs); `wait` returns >128 when a trapped signal interrupts it, so wait again while mpiexec lives.
mpiexec_pid=""
forward() {
    echo "run-local.sh: got $1: telling legampi to finish files in flight and stop" >&2
    if [[ -n "$mpiexec_pid" ]]; then
        kill "-$1" "$mpiexec_pid" || echo "run-local.sh: mpiexec $mpiexec_pid already gone" >&2
    fi
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
"$MPIEXEC" -n "$NP" "$LEGAMPI" "${OPTS[@]}" -c "$CONFIG" process "$@" &
mpiexec_pid=$!
while :; do
    rc=0
    wait "$mpiexec_pid" || rc=$?
    if ((rc > 128)) && kill -0 "$mpiexec_pid" 2>/dev/null; then
        continue
    fi
    break
done
rc=0
wait "$mpiexec_pid" || rc=$?
echo "run-local.sh: legampi process on $NP rank(s) exited $rc"
((status == 0)) && status=$rc
exit "$status"
