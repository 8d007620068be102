#!/bin/bash
# Run a command "on" a host of the multi-host test bed (tests/multihost/bed.py): in that host's network
# and UTS namespaces, nothing else (same filesystem, same process table, /sys and cgroups untouched).
#
# Called by MPICH's hydra as its ssh:  mpiexec -launcher ssh -launcher-exec tests/multihost/enter.sh ...
# which runs  enter.sh [-x] HOST COMMAND...  with COMMAND a shell command line (quoted as for ssh), so
# options before HOST are skipped and COMMAND runs through /bin/sh -c like ssh's remote shell.
# By hand:   tests/multihost/enter.sh lmh1-h2 hostname
set -euo pipefail
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
exec nsenter --net="$net" --uts="$uts" -- /bin/sh -c "$*"
