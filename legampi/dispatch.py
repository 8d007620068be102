"""How tasks and results travel between rank 0 and the workers (`parallel.Team.run`'s two halves).

Rank 0 (`coordinate`) keeps a book of which worker holds which tasks (`Dispatch`): it deals the first
ones round-robin, keeps every worker's queue short but never empty, and on a stop cancels what was not
started. A worker (`serve`) runs tasks as they come and sends each result back as soon as it is ready.
Messages go through the Team (`send`/`recv`, which ring the doorbell); mpi4py is imported by `parallel`
alone, and this module sees MPI only as the Team's attribute.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol


class Team(Protocol):
    """What this module needs of `parallel.Team` (typed here: parallel imports this module)."""

    MPI: Any
    comm: Any
    bell: Any
    size: int

    def send(self, obj: Any, dest: int, tag: int) -> None: ...

    def recv(
        self, source: int, idle: Callable[[], None] | None = None, tag: int | None = None
    ) -> tuple[Any, int, int]: ...


More = Callable[[int], Sequence[Any]]  # a lazy task source: the next tasks for N workers; empty once no more


TASKS, RESULT, CANCEL, DROPPED, STOP, STOPPING, RESULT_OF_JOB, AGREE, CRASHED = range(1, 10)


def never() -> bool:
    return False


def nothing() -> None:
    return None


def no_size(_task: Any) -> int:
    return 0


class RankFailed(RuntimeError):
    """A worker's crash report (CRASHED), raised on rank 0 so that it can record it before the job ends."""


WORKER_BYTES = 64 * 1024 * 1024  # queued on one worker at most (dynamic schedule), beyond its first two
WORKER_TASKS = 256
LOW = 3  # a worker holding fewer tasks than this (running, its tail, queued) makes rank 0 ask for more
HANDOUT_ENV = "LEGAMPI_HANDOUT"  # "single": refill a worker after every result (benchmarks' A/B baseline)
CRASH_WAIT = 5.0  # seconds a crashing worker waits for rank 0 to take its report
log = logging.getLogger("legampi.parallel")


def coordinate(
    team: Team,
    tasks: list[Any],
    on_result: Callable[[Any], None],
    tick: Callable[[], None],
    should_stop: Callable[[], bool],
    schedule: str,
    key: Callable[[Any], int],
    name: Callable[[Any], str],
    more: More | None = None,
) -> None:
    """Rank 0: hand out TASKS (then what MORE gives, `Dispatch.refill`), call on_result for every result
    (tick while waiting) until every worker is stopped; should_stop cancels what no worker has started."""
    d = Dispatch(team, tasks, schedule, key, name, more)

    def idle() -> None:
        tick()
        if should_stop():
            d.cancel()

    while d.active:
        msg, src, tag = team.recv(team.MPI.ANY_SOURCE, idle)
        if tag == RESULT:
            d.settle(src, [getattr(msg, "file_id", None)])
            on_result(msg)
            if should_stop():
                d.cancel()
            if not d.stopping:
                d.refill()
                d.feed(src)
        elif tag == DROPPED:  # the worker's queue, given back after CANCEL: never started
            d.settle(src, msg)
        elif tag == STOPPING:
            d.cancel()
        elif tag == CRASHED:  # the worker aborts the job once it has been received
            raise RankFailed(msg)
        d.finish_if_idle(src)


def serve(team: Team, work: Callable[[Any], Any], should_stop: Callable[[], bool]) -> None:
    """A worker: run tasks as they come. WORK may return a Future (the end of the task continuing in a
    thread, e.g. waiting for the disk): its result is sent as soon as it is done, in task order, while
    the next task runs; at most one such tail is left running when the next task starts.

    A WORK with a `flush` method (grouping.GroupedWork) holds some results back until several files are
    durable together: it is told to flush whenever nothing more is queued here, and bounds its own tails."""
    queue: deque[Any] = deque()
    running: deque[Any] = deque()
    told = False
    status = team.MPI.Status()
    flush: Callable[[], None] | None = getattr(work, "flush", None)

    def deliver(block: bool = False) -> None:
        while running and (block or running[0].done()):
            team.send(running.popleft().result(), 0, RESULT)

    while True:
        while not queue or told or team.comm.Iprobe(source=0, tag=team.MPI.ANY_TAG, status=status):
            if flush is not None and (not queue or told):
                flush()  # nothing more to start now: what is held becomes durable, its results follow
            msg, _src, tag = team.recv(0, idle=deliver)
            if tag == TASKS:
                queue.extend(msg)
            elif tag == CANCEL:
                team.send([ident(t) for t in queue], 0, DROPPED)
                queue.clear()
            elif tag == STOP:  # rank 0 stops a worker only once it has every result
                deliver(block=True)
                return
        if should_stop() and not told:
            team.send(None, 0, STOPPING)
            told = True  # start nothing new: wait for rank 0's CANCEL (drops the queue), then STOP
            continue
        out = work(queue.popleft())
        deliver(block=flush is None)
        if is_future(out):
            out.add_done_callback(lambda _f: team.bell.ring_self())
            running.append(out)
        else:
            team.send(out, 0, RESULT)


def serve_in_process(
    work: Callable[[Any], Any],
    queue: deque[Any],
    on_result: Callable[[Any], None],
    tick: Callable[[], None],
    should_stop: Callable[[], bool],
    more: Callable[[], Iterable[Any]] | None = None,
) -> None:
    """`serve` and `coordinate` in one process (one rank): results in task order, a Future awaited; MORE
    (a lazy source) gives the next tasks once the queue is empty; a WORK with `flush` is flushed when
    nothing more will start, and its results taken as they are ready."""
    flush: Callable[[], None] | None = getattr(work, "flush", None)
    held: deque[Any] = deque()

    def refill() -> None:
        if not queue and more is not None and not should_stop():
            queue.extend(more())

    def deliver(last: bool) -> None:
        while held and (last or flush is None or not is_future(held[0]) or held[0].done()):
            out = held.popleft()
            on_result(out.result() if is_future(out) else out)
            tick()

    refill()
    while queue and not should_stop():
        held.append(work(queue.popleft()))
        deliver(False)  # what is ready, before asking for more (its results may stop the job)
        refill()
        last = not queue or should_stop()
        if last and flush is not None:
            flush()
        deliver(last)
    if held:  # stopped (a signal) while a group was still held: make it durable, report every result
        if flush is not None:
            flush()
        deliver(True)


class Dispatch:
    """Rank 0's book in `Team.run`: which worker holds which tasks; feeding, cancelling, stopping."""

    def __init__(
        self,
        team: Team,
        tasks: list[Any],
        schedule: str,
        key: Callable[[Any], int],
        name: Callable[[Any], str],
        more: More | None = None,
    ) -> None:
        self.team, self.key, self.name = team, key, name
        self.workers = list(range(1, team.size))
        self.dynamic = schedule == "dynamic"
        self.more = more if self.dynamic else None
        self.queues = order(
            tasks if self.dynamic else drain(tasks, more, len(self.workers)), schedule, key, name, len(self.workers)
        )
        self.pending: deque[Any] = self.queues[0] if self.dynamic else deque()
        self.outstanding: dict[int, dict[Any, Any]] = {w: {} for w in self.workers}  # task id -> task, in order
        self.held = dict.fromkeys(self.workers, 0)  # bytes outstanding per worker
        self.active = set(self.workers)
        self.stopping = False
        # Refill a worker once half of what it was last topped up to is done, in one message (tiny files:
        # ~128 per TASKS message instead of one per result); "single": after every result, as before.
        self.single = os.environ.get(HANDOUT_ENV, "").strip().lower() == "single"
        self.topped = dict.fromkeys(self.workers, 0)  # tasks outstanding on each worker after its last top-up
        hosts = getattr(team, "hosts", {})  # every rank's host, once the ranks agreed (parallel.Team)
        self.node_workers = {w: sum(hosts.get(v, v) == hosts.get(w, w) for v in self.workers) for w in self.workers}
        self.refill()
        if self.dynamic:  # deal the first files round-robin, so small jobs spread over all ranks
            dealt: list[tuple[int, list[Any]]] = []  # in dealing order, one file each
            while self.pending and any(self.wants(w) for w in self.workers):
                dealt += [(w, self._take(w, 1)) for w in self.workers if self.wants(w)]
            if self.single:  # one message per file, as before
                for w, part in dealt:
                    self.team.send(part, w, TASKS)
            else:  # one message per worker
                per: dict[int, list[Any]] = {}
                for w, one in dealt:
                    per.setdefault(w, []).extend(one)
                for w, part in per.items():
                    self.team.send(part, w, TASKS)
            for w in self.workers:
                self.topped[w] = len(self.outstanding[w])
        for w in self.workers:
            self.feed(w)
            self.finish_if_idle(w)

    def wants(self, w: int) -> bool:
        # Keep >= 2 files queued per worker, more when they are small (so a worker never waits on rank 0),
        # but never more than 64 MB or 256 files, so largest-first stays balanced.
        n = len(self.outstanding[w])
        return bool(self.pending) and (
            n < 2 or (n < WORKER_TASKS and self.held[w] + self.key(self.pending[0]) <= WORKER_BYTES)
        )

    def _take(self, w: int, most: int | None = None) -> list[Any]:
        """Move up to MOST tasks (as many as W wants) from pending to W's book; the caller sends them."""
        batch: list[Any] = []
        while self.wants(w) and (most is None or len(batch) < most):
            t = self.pending.popleft()
            self.mark(t, w)
            batch.append(t)
            self.outstanding[w][ident(t)] = t
            self.held[w] += self.key(t)
        return batch

    def feed(self, w: int) -> None:
        if self.dynamic:
            n = len(self.outstanding[w])
            if not self.single and n >= 2 and n > self.topped[w] // 2:
                return  # enough queued: wait until half is done, then top up in one message
            batch = self._take(w)
            self.topped[w] = len(self.outstanding[w])
        else:
            batch = list(self.queues[w - 1])
            self.queues[w - 1].clear()
            for t in batch:
                self.mark(t, w)
            self.outstanding[w].update((ident(t), t) for t in batch)
        if batch:
            self.team.send(batch, w, TASKS)

    def refill(self) -> None:
        """Take the task source's next tasks once none is left to hand out and some worker runs low
        (dynamic schedule; each batch in largest-first order after the last)."""
        if self.more is None or self.stopping or self.pending:
            return
        if self.active and not any(len(self.outstanding[w]) < LOW for w in self.active):
            return
        batch = list(self.more(len(self.active)))
        if not batch:
            self.more = None  # no more: workers stop as their queues empty
            return
        self.pending.extend(order(batch, "dynamic", self.key, self.name, 1)[0])

    def mark(self, task: Any, w: int) -> None:
        """What a FileTask-like task tells its worker about idle cores (`spread.threads_for`): the worker
        ranks on W's node, and `spread` when fewer files are left than workers (dynamic schedule)."""
        if hasattr(task, "spread"):
            # fewer files left than workers: the claims source (`more`) must be empty too, or more will come
            task.spread = self.dynamic and self.more is None and len(self.pending) < len(self.workers)
            task.node_workers = self.node_workers[w]

    def settle(self, w: int, ids: Sequence[Any]) -> None:
        """Worker W no longer holds these tasks (a result came back, or it dropped them unstarted)."""
        for ident in ids:
            t = self.outstanding[w].pop(ident, None)
            if t is not None:
                self.held[w] -= self.key(t)

    def finish_if_idle(self, w: int) -> None:
        if w in self.active and not self.outstanding[w]:
            self.team.send(None, w, STOP)
            self.active.discard(w)

    def cancel(self) -> None:
        if not self.stopping:
            self.stopping = True
            self.pending.clear()
            for w in sorted(self.active):
                self.team.send(None, w, CANCEL)


def is_future(obj: Any) -> bool:
    return callable(getattr(obj, "add_done_callback", None))


def ident(task: Any) -> Any:
    """A task's id in messages: its file_id (tasks are FileTask-like), or the task itself."""
    return getattr(task, "file_id", task)


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


def drain(tasks: Sequence[Any], more: More | None, workers: int) -> list[Any]:
    """TASKS and everything MORE gives (a schedule that splits every task at the start: static)."""
    out = list(tasks)
    while more is not None and (batch := list(more(workers))):
        out += batch
    return out


def tell_rank0(team: Team, what: str) -> None:
    """Hand a worker's crash report to rank 0 (it records it in the job row, then ends the job) and wait
    until rank 0 has taken it (a synchronous send), at most CRASH_WAIT seconds: no blind sleep."""
    team.bell.lifelines.close()  # a goodbye: rank 0 takes the report, not the line's end, as the news
    try:
        team.bell.ring(0)
        req = team.comm.issend(what, dest=0, tag=CRASHED)
        deadline = time.monotonic() + CRASH_WAIT
        while not req.Test() and time.monotonic() < deadline:
            team.bell.ring(0)
            team.bell.wait(0.01)
    except Exception as exc:  # noqa: BLE001 - rank 0 may be gone too: abort anyway
        log.debug("crash report not delivered: %s", exc)
