"""Run by test_mpiexec.test_hosts_are_hosts across the bed: every rank exchanges a message with rank 0,
then prints "RANK HOSTNAME PEER_ADDR..." with the remote addresses of its established TCP connections
(read from /proc/self/net/tcp, which shows this rank's own network namespace)."""

import os
import socket

os.environ.setdefault("MPIR_CVAR_CH4_NETMOD", "ofi")  # what legampi sets before MPI_Init (parallel.py)
from mpi4py import MPI


def established_peers() -> list[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    with open("/proc/self/net/tcp") as fh:
        for line in fh.read().splitlines()[1:]:
            f = line.split()
            if f[9] in inodes and f[3] == "01":
                out.append(socket.inet_ntoa(bytes.fromhex(f[2].split(":")[0])[::-1]))
    return out


comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
for peer in range(1, size):
    if rank == 0:
        comm.send(b"ping", dest=peer)
        comm.recv(source=peer)
    elif rank == peer:
        comm.recv(source=0)
        comm.send(b"pong", dest=0)
lines = comm.gather(" ".join([str(rank), socket.gethostname(), *established_peers()]), root=0)
if rank == 0:
    assert lines is not None
    print("\n".join(lines), flush=True)
