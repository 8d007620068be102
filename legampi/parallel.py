"""The only module that imports mpi4py: rank roles, dispatch, gather, abort.

Rank 0 coordinates (and alone talks to the database); ranks 1..n run the work function on the tasks they
are handed and send each result back as soon as it is ready. With one rank the same loop runs in-process.
Waiting never spins a core: MPICH's blocking receive busy-polls, so receives here are Iprobe + a wait
with an exponential backoff (<= 50 ms). Ranks on the same host also ring a doorbell (a datagram on a
Unix socket, see `Doorbell`) around each message, and the waiting rank sleeps in select() on it, so it
wakes within microseconds instead of after the backoff; ranks on other hosts fall back to the backoff.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("legampi.parallel")

TASKS, RESULT, CANCEL, DROPPED, STOP, STOPPING, RESULT_OF_JOB, AGREE = range(1, 9)
FIRST_WAIT = 0.0002
MAX_WAIT = 0.05
ABORT_GRACE = 0.2


class LaunchError(RuntimeError):
    """The job was started in a way that cannot work (e.g. srun without --mpi=pmi2)."""


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


class Team:
    """This job's ranks. Rank 0 coordinates; the others work."""

    def __init__(self, use_mpi: bool = True):
        self.comm: Any = None
        self.rank, self.size = 0, 1
        if use_mpi:
            _quiet_transport_defaults()
            from mpi4py import MPI

            self.MPI = MPI
            self.comm = MPI.COMM_WORLD
            self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.bell = Doorbell(enabled=self.size > 1)

    @property
    def coordinator(self) -> bool:
        return self.rank == 0

    @property
    def workers(self) -> int:
        return max(0, self.size - 1)

    def check_launch(self, env: dict[str, str] | None = None) -> None:
        """Refuse launches that would silently run N copies of a one-rank job."""
        env = dict(os.environ if env is None else env)
        step_tasks = env.get("SLURM_STEP_NUM_TASKS")
        if step_tasks and int(step_tasks) > 1 and self.size == 1:
            raise LaunchError(
                f"Slurm started {step_tasks} tasks but MPI sees a communicator of size 1: every task would run "
                "alone. Start with `srun --mpi=pmi2 legampi ...` (the PyPI mpich needs PMI2), or with one task."
            )

    # ------------------------------------------------------------------ collective helpers
    def agree(self, ok: bool, message: str = "") -> list[str]:
        """All ranks learn every rank's problem; returns the messages of the ranks that are not ok.

        Point-to-point with polling receives, not allgather: MPICH's collective spins (sched_yield) on
        every rank that arrives early, e.g. the workers while rank 0 opens the database, and on a full
        node that steals the CPU the late rank needs to get there."""
        if self.comm is None or self.size == 1:
            return [] if ok else [message]
        mine = (ok, self.rank, message, self.bell.address)
        if self.rank == 0:
            everyone = [mine] + [self._recv(w, tag=AGREE)[0] for w in range(1, self.size)]
            for _good, r, _m, address in everyone[1:]:
                self.bell.add_peer(r, address)
            for w in range(1, self.size):
                self._send(everyone, w, AGREE)
        else:
            self._send(mine, 0, AGREE)
            everyone = self._recv(0, tag=AGREE)[0]
            self.bell.add_peer(0, everyone[0][3])
        return [f"rank {r}: {m}" for good, r, m, _address in everyone if not good]

    def ready(self, problem: str, logger: logging.Logger) -> bool:
        """Start-up barrier: every rank says whether it could prepare (database, keys); if any could not,
        rank 0 logs each problem and every rank returns False, so the job stops before touching a file."""
        problems = self.agree(not problem, problem)
        if problems and self.coordinator:
            for p in problems:
                logger.error("not starting: %s", p)
        return not problems

    def bcast(self, obj: Any) -> Any:
        """Rank 0's OBJ on every rank (the job's exit status at the end). Point-to-point with polling
        receives, because workers often wait here while rank 0 finishes its database work and MPICH's
        collective would spin their cores. It also keeps every rank alive until rank 0 is done: with the
        ofi netmod MPI_Finalize does not wait, and Slurm's WaitTime would kill the tasks still running
        once the first one exits."""
        if self.comm is None or self.size == 1:
            return obj
        if self.rank == 0:
            for w in range(1, self.size):
                self._send(obj, w, RESULT_OF_JOB)
            return obj
        return self._recv(0)[0]

    def abort(self, code: int = 1) -> None:
        """End every rank now (an exception on one rank must not leave the others waiting forever).

        MPI_Abort makes the launcher kill every rank at once, and hydra drops output it has not forwarded
        yet: under load 5 of 12 crash reports were lost before the dying rank waited ABORT_GRACE first.
        A crash ends the job anyway, so the pause costs nothing that matters."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.comm is not None and self.size > 1:
            time.sleep(ABORT_GRACE)
            self.comm.Abort(code)
        os._exit(code)

    # ------------------------------------------------------------------ messaging
    def _recv(
        self, source: int, idle: Callable[[], None] | None = None, tag: int | None = None
    ) -> tuple[Any, int, int]:
        status = self.MPI.Status()
        delay = FIRST_WAIT
        want = self.MPI.ANY_TAG if tag is None else tag
        while not self.comm.Iprobe(source=source, tag=want, status=status):
            if idle is not None:
                idle()
            # a ring means a message was just sent to us: look again soon even if it is not visible yet
            delay = FIRST_WAIT if self.bell.wait(delay) else min(delay * 2, MAX_WAIT)
        src, tag = status.Get_source(), status.Get_tag()
        return self.comm.recv(source=src, tag=tag), src, tag

    def _send(self, obj: Any, dest: int, tag: int) -> None:
        # Ring before (a large message may need the receiver's progress before send() returns) and
        # after (the receiver may have looked between the first ring and the message's arrival).
        self.bell.ring(dest)
        self.comm.send(obj, dest=dest, tag=tag)
        self.bell.ring(dest)

    # ------------------------------------------------------------------ the run
    def run(
        self,
        tasks: Sequence[Any] | None,
        work: Callable[[Any], Any] | None,
        on_result: Callable[[Any], None],
        tick: Callable[[], None] = lambda: None,
        should_stop: Callable[[], bool] = lambda: False,
        schedule: str = "dynamic",
        key: Callable[[Any], int] = lambda t: 0,
        name: Callable[[Any], str] = str,
    ) -> list[Any]:
        """Process TASKS (given on rank 0) with WORK on the worker ranks; returns the unstarted tasks.

        Rank 0 calls on_result for every result as it arrives, and tick while it waits. Workers return [].
        """
        if self.size == 1:
            if work is None:
                raise ValueError("one rank: a work function is needed to run in-process")
            queue = order(list(tasks or ()), schedule, key, name, 1)[0]
            while queue and not should_stop():
                out = work(queue.popleft())
                on_result(out.result() if _is_future(out) else out)
                tick()
            return list(queue)
        if self.rank == 0:
            return self._coordinate(list(tasks or ()), on_result, tick, should_stop, schedule, key, name)
        if work is None:
            raise ValueError("worker ranks need a work function")
        self._work(work, should_stop)
        return []

    def _coordinate(
        self,
        tasks: list[Any],
        on_result: Callable[[Any], None],
        tick: Callable[[], None],
        should_stop: Callable[[], bool],
        schedule: str,
        key: Callable[[Any], int],
        name: Callable[[Any], str],
    ) -> list[Any]:
        workers = list(range(1, self.size))
        queues = order(tasks, schedule, key, name, len(workers))
        dynamic = schedule == "dynamic"
        pending: deque[Any] = queues[0] if dynamic else deque()
        outstanding: dict[int, dict[Any, Any]] = {w: {} for w in workers}  # task id -> task, in order
        active = set(workers)
        stopping = False

        held = dict.fromkeys(workers, 0)  # bytes outstanding per worker

        def wants(w: int) -> bool:
            # Keep >= 2 files queued per worker, more when they are small (so a worker never waits on
            # rank 0), but never more than 64 MB or 256 files, so largest-first stays balanced.
            n = len(outstanding[w])
            return bool(pending) and (n < 2 or (n < 256 and held[w] + key(pending[0]) <= 64 * 1024 * 1024))

        def feed(w: int, most: int | None = None) -> None:
            if dynamic:
                batch: list[Any] = []
                while wants(w) and (most is None or len(batch) < most):
                    t = pending.popleft()
                    batch.append(t)
                    outstanding[w][_ident(t)] = t
                    held[w] += key(t)
            else:
                batch = list(queues[w - 1])
                queues[w - 1].clear()
                outstanding[w].update((_ident(t), t) for t in batch)
            if batch:
                self._send(batch, w, TASKS)

        def finish_if_idle(w: int) -> None:
            if w in active and not outstanding[w]:
                self._send(None, w, STOP)
                active.discard(w)

        def cancel() -> None:
            nonlocal stopping
            if not stopping:
                stopping = True
                pending.clear()
                for w in sorted(active):
                    self._send(None, w, CANCEL)

        if dynamic:  # deal the first files round-robin, one at a time, so small jobs spread over all ranks
            while pending and any(wants(w) for w in workers):
                for w in workers:
                    if wants(w):
                        feed(w, most=1)
        for w in workers:
            feed(w)
            finish_if_idle(w)

        def idle() -> None:
            tick()
            if should_stop():
                cancel()

        unstarted: list[Any] = []
        while active:
            msg, src, tag = self._recv(self.MPI.ANY_SOURCE, idle)
            if tag == RESULT:
                done = outstanding[src].pop(getattr(msg, "file_id", None), None)
                if done is not None:
                    held[src] -= key(done)
                on_result(msg)
                if should_stop():
                    cancel()
                if not stopping:
                    feed(src)
            elif tag == DROPPED:
                for fid in msg:
                    t = outstanding[src].pop(fid, None)
                    if t is not None:
                        held[src] -= key(t)
                        unstarted.append(t)
            elif tag == STOPPING:
                cancel()
            finish_if_idle(src)
        return unstarted + list(pending)

    def _work(self, work: Callable[[Any], Any], should_stop: Callable[[], bool]) -> None:
        """Run tasks as they come. WORK may return a Future (the end of the task continuing in a thread,
        e.g. waiting for the disk): its result is sent as soon as it is done, in task order, while the
        next task runs; at most one such tail is left running when the next task starts."""
        queue: deque[Any] = deque()
        running: deque[Any] = deque()
        told = False
        status = self.MPI.Status()

        def deliver(block: bool = False) -> None:
            while running and (block or running[0].done()):
                self._send(running.popleft().result(), 0, RESULT)

        while True:
            while not queue or told or self.comm.Iprobe(source=0, tag=self.MPI.ANY_TAG, status=status):
                msg, _src, tag = self._recv(0, idle=deliver)
                if tag == TASKS:
                    queue.extend(msg)
                elif tag == CANCEL:
                    self._send([_ident(t) for t in queue], 0, DROPPED)
                    queue.clear()
                elif tag == STOP:  # rank 0 stops a worker only once it has every result
                    deliver(block=True)
                    return
            if should_stop() and not told:
                self._send(None, 0, STOPPING)
                told = True  # start nothing new: wait for rank 0's CANCEL (drops the queue), then STOP
                continue
            out = work(queue.popleft())
            deliver(block=True)
            if _is_future(out):
                out.add_done_callback(lambda _f: self.bell.ring_self())
                running.append(out)
            else:
                self._send(out, 0, RESULT)


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


def _quiet_transport_defaults() -> None:
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


def _is_future(obj: Any) -> bool:
    return callable(getattr(obj, "add_done_callback", None))


def _ident(task: Any) -> Any:
    """A task's id in messages: its file_id (tasks are FileTask-like), or the task itself."""
    return getattr(task, "file_id", task)


def launched_by_mpi(env: dict[str, str] | None = None) -> bool:
    """Was this process started by mpiexec/srun as one of several ranks? (Tells without importing MPI.)"""
    env = dict(os.environ if env is None else env)
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS", "MPI_LOCALNRANKS"):
        if env.get(var, "").isdigit() and int(env[var]) > 1:
            return True
    return False


def order(
    tasks: list[Any], schedule: str, key: Callable[[Any], int], name: Callable[[Any], str], workers: int
) -> list[deque[Any]]:
    """Dynamic: one queue, largest first. Static: the seed's formula over the sorted listing, file number
    ``branch + branches*n`` (1-based) going to worker ``branch`` (1..branches = workers)."""
    if schedule == "dynamic":
        return [deque(sorted(tasks, key=lambda t: (-key(t), name(t))))]
    if schedule != "static":
        raise ValueError(f"unknown schedule {schedule!r}")
    ordered = sorted(tasks, key=name)
    return [deque(t for i, t in enumerate(ordered, 1) if (i - b) % workers == 0) for b in range(1, workers + 1)]


def report_crash(team: Team, exc: BaseException) -> None:
    """Print which rank failed and why, then end the whole job with a non-zero status."""
    sys.stderr.write(f"legampi: rank {team.rank} of {team.size} failed: {type(exc).__name__}: {exc}\n")
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    team.abort(1)
