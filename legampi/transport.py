"""Transport details under `parallel`: the doorbell that wakes waiting ranks, and MPI's environment.

MPICH cannot wait for a message without spinning a core, so `parallel` waits with Iprobe and a backoff;
ranks on the same host also ring each other's doorbell around every message so that the waiting rank
wakes within microseconds instead of after its backoff. mpi4py is not imported here (only `parallel`
imports it); `quiet_transport_defaults` runs before it is.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import sys
import time

log = logging.getLogger("legampi.parallel")


class Doorbell:
    """Same-host wake-ups for ranks waiting on MPI messages, which MPICH cannot wait for without spinning.

    Each rank binds a datagram socket in Linux's abstract Unix namespace under a random name and
    publishes it in the start-up handshake (`Team.agree`). Around every message a rank sends, it drops
    one byte on the receiver's socket; a waiting rank sleeps in select() on its own socket for at most
    its backoff. The byte is only a hint: receivers still Iprobe, so a lost ring, a full socket buffer,
    a stray datagram or a peer on another host (its name is unknown here; sending to it fails once and
    that peer is polled from then on) changes latency, never what is received. Without the abstract
    namespace (not Linux) there is no doorbell and waiting is the plain backoff.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.address: bytes | None = None
        self.peers: dict[int, bytes] = {}
        self._sock: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        if not enabled or not sys.platform.startswith("linux"):
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            address = b"\0legampi-bell-" + os.urandom(12).hex().encode()
            sock.bind(address)
        except OSError as exc:
            sock.close()
            log.debug("no doorbell (%s); waiting by polling only", exc)
            return
        sock.setblocking(False)
        self._sock, self.address = sock, address
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)

    def add_peer(self, rank: int, address: bytes | None) -> None:
        if address is not None and self._sock is not None:
            self.peers[rank] = address

    def ring(self, rank: int) -> None:
        """Wake `rank` if it waits on this host; never blocks."""
        address = self.peers.get(rank)
        if address is not None and not self._drop(address):
            del self.peers[rank]  # on another host, or gone: polled from now on

    def ring_self(self) -> None:
        """Wake this rank's own wait (from another thread: a task's tail has finished)."""
        if self.address is not None:
            self._drop(self.address)

    def _drop(self, address: bytes) -> bool:
        """Drop one byte on a doorbell; False if that doorbell does not exist (ECONNREFUSED/ENOENT)."""
        if self._sock is None:
            return True
        try:
            self._sock.sendto(b"!", address)
        except BlockingIOError:
            return True  # its queue is full of earlier rings: it will wake anyway
        except OSError as exc:
            log.debug("doorbell %r unreachable (%s); polling instead", address, exc)
            return False
        return True

    def wait(self, timeout: float) -> bool:
        """Sleep until a ring or `timeout` seconds; True if rung (all pending rings are consumed)."""
        if self._selector is None or self._sock is None:
            time.sleep(timeout)
            return False
        if not self._selector.select(timeout):
            return False
        while True:
            try:
                self._sock.recv(64)
            except BlockingIOError:
                return True

    def close(self) -> None:
        if self._selector is not None:
            self._selector.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._selector = None


def quiet_transport_defaults() -> None:
    """Defaults for the MPI library's environment, set before it loads; the operator's settings win.

    UCX_MEM_EVENTS=no: the PyPI MPICH links UCX, whose library constructor otherwise patches every
    loaded library's malloc/mmap symbols to track memory for its RDMA registration cache. That costs
    ~40 ms per rank at start (measured: dlopen of libucs 41 ms -> 0.8 ms) and hooks every mmap of the
    file buffers afterwards, for a cache only large zero-copy messages use; legampi's messages are small
    task lists and results.

    Only for the PyPI MPICH (found by its bundled libfabric; it is built with both the ucx and the ofi
    netmod, so the choice is always valid there; a site MPI is left alone):
    MPIR_CVAR_CH4_NETMOD=ofi: measured on 3 ranks, MPI_Init 10 ms instead of 35-50 ms and MPI_Finalize
    2-12 ms instead of 45-90 ms;
    MPIR_CVAR_ENABLE_HEAVY_YIELD=1: MPICH's waits sleep instead of sched_yield; the shared-memory
    barrier in MPI_Init otherwise spins every early rank until the last one arrives (53-73 ms of CPU
    each on 3 ranks / 2 cores, taken from the ranks still starting; 16-20 ms with it).
    An empty 3-rank job takes 164 ms with these defaults and 252 ms without (benchmarks/startup.py)."""
    os.environ.setdefault("UCX_MEM_EVENTS", "no")
    bundled = os.path.join(sys.prefix, "lib", "mpich", "libfabric.so.1")
    if "MPI4PY_LIBMPI" not in os.environ and os.path.exists(bundled):
        os.environ.setdefault("MPIR_CVAR_CH4_NETMOD", "ofi")
        os.environ.setdefault("MPIR_CVAR_ENABLE_HEAVY_YIELD", "1")
