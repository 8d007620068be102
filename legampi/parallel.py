"""The executor face on the job's ranks, and the only module that imports mpi4py.

A command is a `Job`: what rank 0 opens (the database), the work function each working rank loads, and
a coordinator-side function over tasks and results that neither knows nor cares how many ranks there
are. `execute` runs a job the way mpi4py.futures.MPICommExecutor runs a pool: one context manager
(`Session`) owns the start-up agreement, the serving loop on the worker ranks, crash reports and the
final exit status. With one rank (or no MPI at all, as in unit tests) the same job runs in-process.

Rank 0 coordinates (alone talks to the database); ranks 1..n run the work function on what they are
handed, sending each result back once ready. MPICH's blocking receive spins, so receives here are Iprobe
bursts + a backoff (<= 50 ms) woken by the receiver's doorbell (`transport.Doorbell`, Unix datagram or UDP
across hosts) that senders ring; its TCP lifelines name a rank that is gone (`LostRank`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from . import dispatch as ds
from .dispatch import AGREE, RESULT_OF_JOB, More, coordinate, drain, order, serve, serve_in_process, tell_rank0
from .transport import Doorbell, quiet_transport_defaults
from .transport import LostRank as LostRank  # re-exported: the executor face's errors
from .transport import StopFlag as StopFlag
from .transport import launched_by_mpi as launched_by_mpi  # re-exported: the CLI asks before importing MPI

log = logging.getLogger("legampi.parallel")

FIRST_WAIT = 0.0002
MAX_WAIT = 0.05
PROBE_BURST = 10  # Iprobes per wake-up: ofi shows a message from another host only after ~3 (progress calls)
ABORT_GRACE = 0.2
LOST_WAIT = 1.0  # seconds an MPI error waits for a lifeline to say which rank is gone
EXIT_LOST_RANK = 3

S = TypeVar("S")  # what rank 0 opened for a job (its database, ...)
Work = Callable[[Any], Any]  # one task -> its result, or a Future of it (the task's tail runs on in a thread)


class LaunchError(RuntimeError):
    """The job was started in a way that cannot work (e.g. srun without --mpi=pmi2)."""


class NotReady(Exception):
    """A rank cannot prepare its part of a job (database, keys): every rank stops before any task (exit 2)."""


# ---------------------------------------------------------------------- the executor face
@dataclass
class Job(Generic[S]):
    """One MPI command as `execute` runs it; none of these functions knows how many ranks there are.

    open: on rank 0, what the coordinator needs (the database); raise NotReady to refuse the job.
    load: on every rank that works (the workers, or rank 0 alone), given the rank's number to label
      results with: the work function (tasks and results are pickled between ranks); raise NotReady.
    coordinate: on rank 0, with what `open` returned and an `Executor`: plan, run, record; the exit status.
    should_stop: the serving ranks' stop flag (SIGTERM/SIGUSR1); rank 0 passes its own to Executor.run.
    """

    open: Callable[[], S]
    load: Callable[[int], Work]
    coordinate: Callable[[S, Executor], int]
    should_stop: Callable[[], bool] = ds.never


class Executor:
    """What a coordinator-side function gets: tasks in, results back as they come; the same on any size."""

    ranks = 1  # ranks in the job, for the record only

    def run(
        self,
        tasks: Sequence[Any],
        on_result: Callable[[Any], None],
        *,
        tick: Callable[[], None] = ds.nothing,
        should_stop: Callable[[], bool] = ds.never,
        schedule: str = "dynamic",
        key: Callable[[Any], int] = ds.no_size,
        name: Callable[[Any], str] = str,
        more: More | None = None,
    ) -> None:
        """Run every task (once per job): on_result for each result as it arrives, tick while waiting.
        should_stop: start no new task (those in flight finish; the rest never get a result). Schedules:
        dynamic (largest KEY first, to whoever is free) or static (the seed's formula over NAME order).
        more(n): a lazy source, called for the next tasks for n workers when the queues run low (dynamic;
        static takes all at the start) until it gives none: jobs sharing a backlog claim as they go."""
        raise NotImplementedError


class InProcess(Executor):
    """Work in this process, in schedule order (one rank; unit tests). A Future's result is awaited."""

    def __init__(self, work: Work) -> None:
        self.work = work

    def run(
        self,
        tasks: Sequence[Any],
        on_result: Callable[[Any], None],
        *,
        tick: Callable[[], None] = ds.nothing,
        should_stop: Callable[[], bool] = ds.never,
        schedule: str = "dynamic",
        key: Callable[[Any], int] = ds.no_size,
        name: Callable[[Any], str] = str,
        more: More | None = None,
    ) -> None:
        queue = order(list(tasks) if schedule == "dynamic" else drain(tasks, more, 1), schedule, key, name, 1)[0]
        lazy = more if schedule == "dynamic" else None  # static: `drain` took everything up front
        refill = None if lazy is None else lambda: order(list(lazy(1)), schedule, key, name, 1)[0]
        serve_in_process(self.work, queue, on_result, tick, should_stop, refill)


class _Coordinator(Executor):
    """Rank 0's executor over a team of several ranks: `Team.run` hands the tasks to the workers."""

    def __init__(self, team: Team) -> None:
        self.team, self.ranks, self.used = team, team.size, False

    def run(
        self,
        tasks: Sequence[Any],
        on_result: Callable[[Any], None],
        *,
        tick: Callable[[], None] = ds.nothing,
        should_stop: Callable[[], bool] = ds.never,
        schedule: str = "dynamic",
        key: Callable[[Any], int] = ds.no_size,
        name: Callable[[Any], str] = str,
        more: More | None = None,
    ) -> None:
        if self.used:
            raise RuntimeError("Executor.run runs once per job: the workers stop when it returns")
        self.used = True
        self.team.run(list(tasks), None, on_result, tick, should_stop, schedule, key, name, more)


class Session(Generic[S]):
    """The executor face on a Team, as a context manager in mpi4py.futures.MPICommExecutor's shape.

    Entering, every rank prepares its part of JOB (rank 0 opens, working ranks load the work function)
    and all ranks agree; if any could not, rank 0 logs each problem and every rank gets `status` 2 and no
    executor, before a task is touched. Otherwise the worker ranks serve tasks until rank 0 is done,
    still inside __enter__, and get no executor; rank 0 gets `executor` and `state` (what it opened).
    Leaving, with several ranks an exception on any rank ends the whole job at once (crash report,
    MPI_Abort: no rank may wait forever for a dead one); otherwise rank 0's `status` reaches every rank.
    TEAM None: one rank without MPI."""

    def __init__(self, job: Job[S], team: Team | None = None, logger: logging.Logger = log) -> None:
        self.job, self.team, self.log = job, team, logger
        self.rank, self.size = (team.rank, team.size) if team is not None else (0, 1)
        self.executor: Executor | None = None
        self.state: S | None = None
        self.status = 2
        self.agreed = False

    def __enter__(self) -> Session[S]:
        try:
            work = self._prepare()
            if work is not None and self.rank != 0:
                assert self.team is not None
                self.team.run(None, work, should_stop=self.job.should_stop)  # serve until rank 0 is done
        except BaseException as exc:
            self._crash(exc)
            raise
        return self

    def _prepare(self) -> Work | None:
        """Open and load on the right ranks, then agree; the work function when every rank is ready."""
        problems: list[str] = []
        work = None
        if self.rank == 0:
            try:
                self.state = self.job.open()
            except NotReady as exc:
                problems.append(str(exc))
        if self.rank != 0 or self.size == 1:
            try:
                work = self.job.load(self.rank)
            except NotReady as exc:
                problems.append(str(exc))
        problem = "; ".join(dict.fromkeys(problems))  # one rank's problems, each once
        if self.team is None:
            everyone = [problem] if problem else []
        else:
            everyone = self.team.agree(not problem, problem)
        if everyone:
            for p in everyone if self.rank == 0 else ():
                self.log.error("not starting: %s", p)
            return None
        self.agreed = True
        if self.rank == 0 and self.team is not None and self.size > 1:
            self.executor = _Coordinator(self.team)
        elif self.rank == 0:
            assert work is not None
            self.executor = InProcess(work)
        return work

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            self._crash(exc)
            return  # one rank: the caller reports it
        if not self.agreed or self.team is None or self.size == 1:
            return
        try:
            if self.rank == 0:
                if isinstance(self.executor, _Coordinator) and not self.executor.used:
                    self.team.run([], None, lambda _r: None)  # the job stopped before running: STOP every worker
                self.team.bcast(self.status)
            else:
                self.status = int(self.team.bcast(None))
        except BaseException as e:
            self._crash(e)
            raise

    def _crash(self, exc: BaseException) -> None:
        """With several ranks, end the job now; ^C and sys.exit are left to the caller, as before."""
        if self.team is not None and self.size > 1 and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            report_crash(self.team, exc)


def execute(job: Job[S], team: Team | None = None, logger: logging.Logger = log) -> int:
    """Run JOB over TEAM's ranks (None: in this process, no MPI); every rank returns the exit status."""
    with Session(job, team, logger) as session:
        if session.executor is not None:  # rank 0, once every rank is ready (the others have served)
            session.status = job.coordinate(cast(S, session.state), session.executor)
    return session.status


# ---------------------------------------------------------------------- the ranks
class Team:
    """This job's MPI ranks. Rank 0 coordinates; the others work."""

    def __init__(self) -> None:
        quiet_transport_defaults()
        from mpi4py import MPI

        self.MPI: Any = MPI
        self.comm: Any = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.bell = Doorbell(enabled=self.size > 1)
        self.hosts: dict[int, str] = {self.rank: self.bell.host}  # rank 0: every rank's host, from `agree`

    @property
    def coordinator(self) -> bool:
        return self.rank == 0

    def check_launch(self, env: dict[str, str] | None = None) -> None:
        """Refuse launches that would silently run N copies of a one-rank job."""
        env = dict(os.environ if env is None else env)
        step_tasks = env.get("SLURM_STEP_NUM_TASKS")
        if step_tasks and int(step_tasks) > 1 and self.size == 1:
            raise LaunchError(
                f"Slurm started {step_tasks} tasks but MPI sees a communicator of size 1: every task would run "
                "alone. Start with `srun --mpi=pmi2 legampi ...` (the PyPI mpich needs PMI2), or with one task."
            )

    def agree(self, ok: bool, message: str = "") -> list[str]:
        """All ranks learn every rank's problem (returned: those of ranks not ok), host and doorbell.
        Point-to-point with polling receives: MPICH's allgather spins every early rank (sched_yield),
        stealing the CPU the late one needs."""
        if self.size == 1:
            return [] if ok else [message]
        mine = (ok, self.rank, message, self.bell.card)
        if self.rank == 0:
            everyone = [mine] + [self.recv(w, tag=AGREE)[0] for w in range(1, self.size)]
            self._learn(everyone)
            for w in range(1, self.size):
                self.send(everyone, w, AGREE)
        else:
            self.send(mine, 0, AGREE)
            everyone = self.recv(0, tag=AGREE)[0]
            self._learn(everyone)
        problems = [f"rank {r}: {m}" for good, r, m, _address in everyone if not good]
        if problems:  # every rank ends now: their lines closing is no news
            self.bell.lifelines.close()
        return problems

    def _learn(self, everyone: list[Any]) -> None:
        """Every rank's host; the doorbells and lifelines (`Doorbell.learn`)."""
        self.hosts.update((r, card[0]) for _good, r, _m, card in everyone)
        self.bell.learn(self.rank, {r: card for _good, r, _m, card in everyone})

    def bcast(self, obj: Any) -> Any:
        """Rank 0's OBJ (the exit status) on every rank; polling receives, as MPICH's bcast would spin the
        waiting workers. Keeps every rank alive until rank 0 is done (ofi's MPI_Finalize does not wait;
        Slurm's WaitTime kills the tasks left once the first one exits)."""
        if self.size == 1:
            return obj
        if self.rank == 0:
            self.bell.lifelines.close()  # the workers end once they have it
            for w in range(1, self.size):
                self.send(obj, w, RESULT_OF_JOB)
            return obj
        out = self.recv(0)[0]
        self.bell.lifelines.close()
        return out

    def abort(self, code: int = 1) -> None:
        """End every rank now (no rank may wait forever for a dead one). MPI_Abort makes the launcher kill
        every rank, and hydra drops output not forwarded yet (5 of 12 crash reports under load): so
        ABORT_GRACE first; a crash ends the job anyway."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.size > 1:
            time.sleep(ABORT_GRACE)
            self.comm.Abort(code)
        os._exit(code)

    def recv(self, source: int, idle: Callable[[], None] | None = None, tag: int | None = None) -> tuple[Any, int, int]:
        status = self.MPI.Status()
        delay = FIRST_WAIT
        want = self.MPI.ANY_TAG if tag is None else tag
        while not self._probe(source, want, status):
            if self.bell.lost:  # only once what the lost rank sent before it went has been received
                raise self.lost(self.bell.lost[0])
            if idle is not None:
                idle()
            # a ring means a message was just sent to us: look again soon even if it is not visible yet
            delay = FIRST_WAIT if self.bell.wait(delay) else min(delay * 2, MAX_WAIT)
        src, tag = status.Get_source(), status.Get_tag()
        try:
            return self.comm.recv(source=src, tag=tag), src, tag
        except self.MPI.Exception as exc:
            raise self.lost(src, exc) from exc

    def lost(self, rank: int, exc: BaseException | None = None) -> LostRank:
        """Name a lost rank (an MPI error on a wildcard receive: the first broken lifeline, if any)."""
        who = self.bell.lost_rank(LOST_WAIT) if rank == self.MPI.ANY_SOURCE else rank
        detail = f"MPI: {str(exc).strip()}" if exc is not None else ""
        return LostRank(who, self.hosts.get(who, "?") if who is not None else None, detail)

    def _probe(self, source: int, tag: int, status: Any) -> bool:
        """A short burst of Iprobes: the ofi netmod needs a few progress calls to surface a remote message."""
        try:
            for _ in range(PROBE_BURST):
                if self.comm.Iprobe(source=source, tag=tag, status=status):
                    return True
        except self.MPI.Exception as exc:
            raise self.lost(source, exc) from exc
        return False

    def send(self, obj: Any, dest: int, tag: int) -> None:
        # Ring before (a large message may need the receiver's progress before send() returns) and
        # after (the receiver may have looked between the first ring and the message's arrival).
        self.bell.ring(dest)
        try:
            self.comm.send(obj, dest=dest, tag=tag)
        except self.MPI.Exception as exc:
            raise self.lost(dest, exc) from exc
        self.bell.ring(dest)

    def run(
        self,
        tasks: Sequence[Any] | None,
        work: Work | None,
        on_result: Callable[[Any], None] = lambda _r: None,
        tick: Callable[[], None] = ds.nothing,
        should_stop: Callable[[], bool] = ds.never,
        schedule: str = "dynamic",
        key: Callable[[Any], int] = ds.no_size,
        name: Callable[[Any], str] = str,
        more: More | None = None,
    ) -> None:
        """The dispatch loop on a team of several: rank 0 hands out TASKS, on_result for each result (tick
        while waiting); workers run WORK until rank 0 stops them. (One rank: `InProcess`.)"""
        if self.size == 1:
            raise ValueError("one rank: tasks run in-process (parallel.InProcess), not through Team.run")
        if self.rank == 0:
            coordinate(self, list(tasks or ()), on_result, tick, should_stop, schedule, key, name, more)
            return
        if work is None:
            raise ValueError("worker ranks need a work function")
        serve(self, work, should_stop)


def report_crash(team: Team, exc: BaseException) -> None:
    """Print which rank failed and why, then end the whole job with a non-zero status."""
    if isinstance(exc, LostRank):  # not this rank's fault: no traceback
        sys.stderr.write(f"legampi: rank {team.rank} on host {team.bell.host}: {exc}\n")
        team.abort(EXIT_LOST_RANK)
    what = f"rank {team.rank} of {team.size} on host {team.bell.host} failed: {type(exc).__name__}: {exc}"
    sys.stderr.write(f"legampi: {what}\n")
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if team.rank != 0:
        tell_rank0(team, what)  # rank 0 records it in the job row, then ends the job
    team.abort(1)
