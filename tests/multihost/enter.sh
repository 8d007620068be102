#!/bin/bash
# Run a command "on" a host of the multi-host test bed (tests/multihost/bed.py): in that host's network
# and UTS namespaces, nothing else (same filesystem, same process table, /sys and cgroups untouched).
#
# Called by MPICH's hydra as its ssh:  mpiexec -launcher ssh -launcher-exec tests/multihost/enter.sh ...
# which runs  enter.sh [-x] HOST COMMAND...  with COMMAND a shell command line (quoted as for ssh), so
# options before HOST are skipped and COMMAND runs through /bin/sh -c like ssh's remote shell.
# By hand:   tests/multihost/enter.sh lmh1-h2 hostname
#
# Like a cluster's resource manager (or sshd closing the session), it ends what it started when its
# caller dies: hydra's proxy whose rank was killed keeps spinning for a while after mpiexec has exited,
# taking a core from the tests that follow. So this script runs under a parent-death signal (setpriv
# --pdeathsig), starts COMMAND in its own process group, and kills that group if it gets the signal.
set -euo pipefail
if [[ -z "${LEGAMPI_BED_SUPERVISED:-}" ]]; then
    export LEGAMPI_BED_SUPERVISED=1
    exec setpriv --pdeathsig TERM -- "$0" "$@"
fi
unset LEGAMPI_BED_SUPERVISED
while [[ $# -gt 0 && "$1" == -* ]]; do
    shift
done
[[ $# -ge 2 ]] || { echo "usage: enter.sh [-opts] HOST COMMAND..." >&2; exit 255; }
host="$1"
shift
net="/run/netns/$host"
uts="/run/legampi-multihost/${host%-h*}/$host.uts"
if [[ ! -e "$net" || ! -e "$uts" ]]; then
    echo "enter.sh: $host is not a host of a running test bed (no $net or $uts)" >&2
    exit 255
fi
set -m  # the command gets its own process group (job control), so the trap can end all of it
nsenter --net="$net" --uts="$uts" -- /bin/sh -c "$*" &
child=$!
trap 'kill -KILL -- "-$child" 2>/dev/null; exit 143' TERM HUP
rc=0
wait "$child" || rc=$?
exit "$rc"
