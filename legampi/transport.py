"""Transport details under `parallel`: the doorbell that wakes waiting ranks, and MPI's environment.

MPICH cannot wait for a message without spinning a core, so `parallel` waits with Iprobe and a backoff;
ranks also ring each other's doorbell around every message (a Unix datagram on the same host, UDP
across hosts) so that the waiting rank wakes within microseconds instead of after its backoff. mpi4py
is not imported here (only `parallel` imports it); `quiet_transport_defaults` runs before it is.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import sys
import time
from typing import Any, cast

log = logging.getLogger("legampi.parallel")


class Doorbell:
    """Wake-ups for ranks waiting on MPI messages, which MPICH cannot wait for without spinning a core.

    Each rank binds two datagram sockets: one in Linux's abstract Unix namespace under a random name
    (same host), one UDP socket on every address of the host, ephemeral port (other hosts). Both are
    published in the start-up handshake (`Team.agree`) with the host name, so every rank can ring every
    other. Around every message a rank sends, it drops one byte on the receiver's doorbell: the Unix one
    for a rank on its own host, the UDP one (each of the receiver's host addresses) otherwise. A waiting
    rank sleeps in select() on both sockets for at most its backoff. The byte is only a hint: receivers
    still Iprobe, so a lost ring, a full socket buffer, a stray datagram from anywhere or an unreachable
    address changes latency, never what is received; an address that fails to send is dropped, and a
    peer with none left is polled from then on. Not Linux: no doorbell, waiting is the plain backoff.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.address: bytes | None = None  # the abstract Unix name (same host)
        self.host = socket.gethostname()
        self.udp: tuple[list[str], int] | None = None  # this host's addresses and the UDP port
        self.peers: dict[int, bytes] = {}
        self.remote: dict[int, list[tuple[str, int]]] = {}
        self._sock: socket.socket | None = None
        self._udp: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        if not enabled or not sys.platform.startswith("linux"):
            return
        self._selector = selectors.DefaultSelector()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            address = b"\0legampi-bell-" + os.urandom(12).hex().encode()
            sock.bind(address)
        except OSError as exc:
            sock.close()
            log.debug("no same-host doorbell (%s)", exc)
        else:
            self._sock, self.address = self._watch(sock), address
        self._open_udp()

    def _watch(self, sock: socket.socket) -> socket.socket:
        assert self._selector is not None
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ)
        return sock

    def _open_udp(self) -> None:
        """The cross-host doorbell: UDP on all of this host's addresses (published: non-loopback IPv4)."""
        addresses = host_addresses()
        if not addresses:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("0.0.0.0", 0))
        except OSError as exc:
            sock.close()
            log.debug("no cross-host doorbell (%s)", exc)
            return
        self._udp = self._watch(sock)
        self.udp = (addresses, sock.getsockname()[1])

    @property
    def card(self) -> tuple[str, bytes | None, tuple[list[str], int] | None]:
        """What this rank publishes at start-up so that others can ring it."""
        return (self.host, self.address, self.udp)

    def add_peer(self, rank: int, card: Any) -> None:
        """Learn how to ring RANK from its `card` (a bare abstract name: same host, as before)."""
        if isinstance(card, (bytes, type(None))):
            card = (self.host, card, None)
        host, address, udp = card
        if host == self.host and address is not None and self._sock is not None:
            self.peers[rank] = address
        elif udp is not None and self._udp is not None:
            self.remote[rank] = [(a, udp[1]) for a in udp[0]]

    def ring(self, rank: int) -> None:
        """Wake `rank` wherever it waits; never blocks."""
        address = self.peers.get(rank)
        if address is not None:
            if not self._drop(address):
                del self.peers[rank]  # gone, or not on this host after all: polled from now on
            return
        targets = self.remote.get(rank)
        if targets:
            self.remote[rank] = [t for t in targets if self._ring_udp(t)]

    def _ring_udp(self, target: tuple[str, int]) -> bool:
        assert self._udp is not None
        try:
            self._udp.sendto(b"!", target)
        except BlockingIOError:
            return True
        except OSError as exc:
            log.debug("doorbell %s:%d unreachable (%s)", target[0], target[1], exc)
            return False
        return True

    def ring_self(self) -> None:
        """Wake this rank's own wait (from another thread: a task's tail has finished)."""
        if self.address is not None:
            self._drop(self.address)
        elif self.udp is not None:
            self._ring_udp(("127.0.0.1", self.udp[1]))

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
        if self._selector is None or (self._sock is None and self._udp is None):
            time.sleep(timeout)
            return False
        ready = self._selector.select(timeout)
        for key, _events in ready:
            sock = cast(socket.socket, key.fileobj)
            while True:
                try:
                    sock.recv(64)
                except OSError:  # BlockingIOError: drained (or an ICMP error from an earlier ring)
                    break
        return bool(ready)

    def close(self) -> None:
        if self._selector is not None:
            self._selector.close()
        for sock in (self._sock, self._udp):
            if sock is not None:
                sock.close()
        self._sock = self._udp = None
        self._selector = None


def host_addresses() -> list[str]:
    """This host's non-loopback IPv4 addresses (Linux: one SIOCGIFADDR ioctl per interface)."""
    import fcntl
    import struct

    found: list[str] = []
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _index, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:
                continue  # no IPv4 address on this interface
            address = socket.inet_ntoa(raw[20:24])
            if not address.startswith("127.") and address not in found:
                found.append(address)
    finally:
        probe.close()
    return found


def launched_by_mpi(env: dict[str, str] | None = None) -> bool:
    """Was this process started by mpiexec/srun as one of several ranks? (Tells without importing MPI.)"""
    env = dict(os.environ if env is None else env)
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS", "MPI_LOCALNRANKS"):
        if env.get(var, "").isdigit() and int(env[var]) > 1:
            return True
    return False


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
