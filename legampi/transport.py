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
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

log = logging.getLogger("legampi.parallel")


class LostRank(RuntimeError):
    """Another rank of the job is gone (killed, its node down): named by whoever notices (exit 3)."""

    def __init__(self, rank: int | None, host: str | None, detail: str = "") -> None:
        who = f"rank {rank} on host {host}" if rank is not None else "a rank"
        super().__init__(f"lost contact with {who}" + (f" ({detail})" if detail else ""))
        self.rank, self.host = rank, host


class StopFlag:
    """Set by SIGTERM/SIGUSR1 (Slurm's warning before the walltime): finish in-flight files, then stop."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    def install(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGUSR1)) -> None:
        def handler(signum: int, _frame: Any) -> None:
            if self.signum is None:
                log.warning("received %s: finishing files in flight, then stopping", signal.Signals(signum).name)
            self.signum = signum

        for s in signals:
            signal.signal(s, handler)


class Lifelines:
    """TCP connections between each worker and rank 0, watched by a daemon thread: when a process dies
    the kernel closes its end and the other side knows at once whom it lost. MPI says only "poll failed",
    and often not at all: a rank can sit inside an MPI call until the launcher kills it, so the thread
    itself writes "lost contact with rank N on host X" (HOSTS: filled in by the caller) to stderr, records
    the rank in `lost` and rings the main thread's doorbell (ON_LOST) for it to end the job."""

    def __init__(self, on_lost: Callable[[], None]) -> None:
        self.on_lost = on_lost
        self.lost: list[int] = []
        self.hosts: dict[int, str] = {}
        self.me = ""
        self.closed = False
        self._said_bye: set[socket.socket] = set()  # lines whose far end is ending normally
        self._listen: socket.socket | None = None
        self._lines: dict[socket.socket, int | None] = {}  # connection -> the rank at the far end
        self._selector = selectors.DefaultSelector()
        self._thread: threading.Thread | None = None

    def listen(self, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("0.0.0.0", port))  # the doorbell's port number, in TCP
            sock.listen(64)
        except OSError as exc:
            sock.close()
            log.debug("no lifeline (%s)", exc)
            return
        self._listen = sock
        self._selector.register(sock, selectors.EVENT_READ)

    def connect(self, rank: int, addresses: list[str], port: int, mine: int) -> None:
        """A worker's line to RANK (0), tried on each of its addresses."""
        for address in addresses:
            try:
                conn = socket.create_connection((address, port), timeout=2)
                conn.sendall(mine.to_bytes(4, "big"))
            except OSError as exc:
                log.debug("lifeline to rank %d at %s failed (%s)", rank, address, exc)
                continue
            self._lines[conn] = rank
            self._selector.register(conn, selectors.EVENT_READ)
            return

    def start(self) -> None:
        if self._thread is None and (self._listen is not None or self._lines):
            # the watcher must get the GIL within the few ms between a rank's death and the launcher's
            # killing of the others: 1 ms instead of Python's 5 ms switch interval
            sys.setswitchinterval(0.001)
            self._thread = threading.Thread(target=self._watch, name="legampi-lifelines", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while True:
            try:
                ready = self._selector.select()
            except (OSError, ValueError):
                return  # closed
            for key, _events in ready:
                sock = cast(socket.socket, key.fileobj)
                if sock is self._listen:
                    self._accept()
                else:
                    self._read(sock)

    def _accept(self) -> None:
        assert self._listen is not None
        try:
            conn, _peer = self._listen.accept()
        except OSError:
            return
        self._lines[conn] = None  # its first 4 bytes name its rank
        self._selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket) -> None:
        """The peer's rank number at first; end of file (or reset) when its process is gone."""
        try:
            data = conn.recv(4)
        except OSError:
            data = b""
        rank = self._lines.get(conn)
        if rank is None and len(data) == 4:
            self._lines[conn] = int.from_bytes(data, "big")
            return
        if data:
            self._said_bye.add(conn)  # any byte after the rank number: the far end is ending normally
            return
        self._selector.unregister(conn)
        self._lines.pop(conn, None)
        conn.close()
        if rank is not None and not self.closed and conn not in self._said_bye:
            line = f"legampi: {self.me}lost contact with rank {rank} on host {self.hosts.get(rank, '?')}\n"
            os.write(2, line.encode())  # at once, past sys.stderr's lock: the launcher may kill us any moment
            self.lost.append(rank)
            self.on_lost()

    def close(self) -> None:
        """Before a normal exit: say goodbye on every line, so that the far end takes its closing as no news."""
        self.closed = True
        for conn in list(self._lines):
            try:
                conn.sendall(b"\0")
            except OSError:
                pass
        self._selector.close()
        for sock in (self._listen, *self._lines):
            if sock is not None:
                sock.close()
        self._lines.clear()
        self._listen = None


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
        self.lifelines = Lifelines(self.ring_self)
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
        self.lifelines.listen(self.udp[1])

    @property
    def lost(self) -> list[int]:
        return self.lifelines.lost

    @property
    def card(self) -> tuple[str, bytes | None, tuple[list[str], int] | None]:
        """What this rank publishes at start-up so that others can ring it."""
        return (self.host, self.address, self.udp)

    def add_peer(self, rank: int, card: Any) -> None:
        """Learn how to ring RANK from its `card` (a bare abstract name: same host, as before)."""
        if isinstance(card, (bytes, type(None))):
            card = (self.host, card, None)
        host, address, udp = card
        self.lifelines.hosts[rank] = host
        if host == self.host and address is not None and self._sock is not None:
            self.peers[rank] = address
        elif udp is not None and self._udp is not None:
            self.remote[rank] = [(a, udp[1]) for a in udp[0]]

    def learn(self, me: int, cards: dict[int, Any]) -> None:
        """From every rank's card (`Team.agree`): the doorbells rank ME rings (workers only rank 0's) and,
        on a worker, a lifeline to rank 0 (see `Lifelines`); then the lifelines are watched."""
        for r, card in cards.items():
            if r != me and (me == 0 or r == 0):
                self.add_peer(r, card)
        host, _address, udp = cards[0]
        if me != 0 and udp is not None:
            self.lifelines.connect(0, [*udp[0], "127.0.0.1"] if host == self.host else udp[0], udp[1], me)
        self.lifelines.me = f"rank {me} on host {self.host}: "
        self.lifelines.start()

    def lost_rank(self, within: float) -> int | None:
        """The first rank whose lifeline broke, waiting up to WITHIN seconds for one to."""
        deadline = time.monotonic() + within
        while not self.lost and time.monotonic() < deadline:
            self.wait(0.05)
        return self.lost[0] if self.lost else None

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
