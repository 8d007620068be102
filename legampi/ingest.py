"""What rank 0 does around the pipeline: plan, claim in batches (`claims`), record results, recover after crashes.

Plain Python: it neither knows nor cares how many ranks there are. ``parallel`` moves tasks and results;
this module decides which files to process and makes the database the checkpoint.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .backlog import Backlog
from .claims import Claims, candidates
from .claims import plan as plan  # re-exported: a whole plan claimed at once (tests)
from .config import Config
from .db import Database, DatabaseError
from .parallel import Executor, Job, NotReady, execute
from .progress import Progress, record_crash
from .recorder import Recorder
from .recovery import recover
from .stream import FileResult, FileTask
from .workspace import make_job_id

log = logging.getLogger("legampi.ingest")


@dataclass
class ProcessOptions:
    """What `legampi process` was asked to do, beyond the configuration (see the CLI's options)."""

    schedule: str = "dynamic"
    branches: int = 1
    branch: int = 1
    retry_failed: bool = False
    dataset: str | None = None
    limit: int | None = None
    recover_first: bool = True
    progress_interval: float = 60.0
    should_stop: Callable[[], bool] = lambda: False


def run_process(
    cfg: Config,
    team: Any,
    connect: Callable[[], Database],
    *,
    out: Any = None,
    **options: Any,
) -> int:
    """`legampi process` on every rank (TEAM None: in this process, without MPI): rank 0 plans, claims
    and records (`process_files`), the workers stream files. OPTIONS are `ProcessOptions`' fields.

    Exit status: 0 when every file handed out was archived (or the job was stopped by a signal and
    released what it had not started), 1 when some failed, 2 when the job could not start, 4 when the
    tracking database was lost mid-run (recorder.LOST_DATABASE).
    """
    opts = ProcessOptions(**options)
    job: Job[Database] = Job(
        open=lambda: open_database(connect),
        load=lambda rank: load_pipeline(cfg, rank),
        coordinate=lambda db, ex: process_files(db, ex, cfg, opts, connect, out),
        should_stop=opts.should_stop,
    )
    return execute(job, team, log)


def open_database(connect: Callable[[], Database]) -> Database:
    """Rank 0's database, its schema checked; a database that cannot be used refuses the job."""
    try:
        db = connect()
        db.require_schema()
    except DatabaseError as exc:
        raise NotReady(str(exc)) from None
    return db


def load_pipeline(cfg: Config, rank: int) -> Callable[[FileTask], Any]:
    """A working rank's work function: stream one file; its fsync and commit overlap the next file, and
    small files are made durable in groups (grouping.GroupedWork)."""
    from .grouping import GroupedWork
    from .stream import PipelineContext

    try:
        ctx = PipelineContext.from_config(cfg)
    except Exception as exc:  # noqa: BLE001 - any key/passphrase problem must reach rank 0 as text
        raise NotReady(f"cannot prepare the pipeline: {exc}") from None
    return GroupedWork(ctx, rank, cfg.func.group_files)


def process_files(
    db: Database, ex: Executor, cfg: Config, opts: ProcessOptions, connect: Any = None, out: Any = None
) -> int:
    """Rank 0's `process`: refuse a job the configuration cannot do, recover, list the candidates, claim
    them in batches as EX's workers need them (jobs sharing a backlog each take a part), record every
    result, release what was claimed but not started, print the summary."""
    import sys

    from .preflight import job_problems

    refused = job_problems(db, cfg, opts.retry_failed, opts.dataset)
    for line in refused:  # keys the files need but the configuration lacks: stop before claiming anything
        log.error("not starting: %s", line)
        print(f"legampi process: not starting: {line}", file=sys.stderr)
    if refused:
        return 2
    job_id = make_job_id()
    db.job_start(job_id, "process", socket.gethostname(), ex.ranks)
    if opts.recover_first:
        for line in recover(db, cfg, job_id).lines():
            log.info("recover: %s", line)
    p = candidates(db, cfg, opts.branches, opts.branch, opts.retry_failed, opts.dataset, opts.schedule)
    claims = Claims(db, job_id, p.tasks, opts.retry_failed, opts.limit)
    log.info(
        "job %s: %d candidate file(s), %d byte(s), to claim in batches; %d worker rank(s), schedule %s",
        job_id,
        len(p.tasks),
        sum(t.size or 0 for t in p.tasks),
        max(ex.ranks - 1, 1),
        opts.schedule,
    )
    recorder = Recorder(db, cfg, job_id, reconnect=connect)
    recorder.summary.skipped = p.skipped
    for line in p.skipped:
        log.info("skipped %s", line)
    progress = Progress(0, 0, opts.progress_interval, logger=log)

    def more(workers: int) -> list[FileTask]:
        first = not claims.claimed
        try:
            batch = recorder.call(lambda db: claims.more(workers, db))  # the recorder thread owns the connection
        except DatabaseError as exc:  # the claim rolled back: finish what is claimed, the next job takes the rest
            log.error("job %s: cannot claim more files (database error: %s); finishing those claimed", job_id, exc)
            return []
        log.log(logging.INFO if first else logging.DEBUG, "job %s: %d file(s) claimed", job_id, len(batch))
        recorder.datasets.update((t.file_id, t.dataset_id) for t in batch)
        progress.total_files += len(batch)
        progress.total_bytes += sum(t.size or 0 for t in batch)
        return batch

    def on_result(r: FileResult) -> None:
        recorder.add(r)
        claims.note(r.bytes_read)
        if r.error_kind != "config":
            progress.add(r.bytes_read, r.status == "failed")

    def tick() -> None:
        recorder.tick()
        progress.tick()

    t0 = time.monotonic()
    with record_crash(recorder, job_id):
        _run(ex, more, on_result, tick, opts, recorder)
    recorder.close()
    progress.close()
    recorder.summary.seconds = time.monotonic() - t0
    recorder.summary.taken = claims.taken
    return _finish(recorder, claims.claimed, job_id, opts, out or sys.stdout)


def _run(ex: Executor, more: Any, on_result: Any, tick: Any, opts: ProcessOptions, recorder: Recorder) -> None:
    """Every file MORE claims (in batches, as the workers need them) through EX; a signal, a `config`
    failure or a lost database starts (and claims) no new file."""
    ex.run(
        [],
        on_result,
        tick=tick,
        # a signal, a `config` failure or a lost database: no new files, in-flight ones finish
        should_stop=lambda: opts.should_stop() or recorder.should_stop(),
        schedule=opts.schedule,
        key=lambda t: t.size or 0,
        name=lambda t: t.rel,
        more=more,
    )


def _finish(recorder: Recorder, tasks: list[FileTask], job_id: str, opts: ProcessOptions, out: Any) -> int:
    """Release the claimed files that were not started, end the job row, print the summary; the status."""
    import sys

    if recorder.lost is not None:  # nothing can be released or ended in a database that is gone
        return recorder.end_lost(out)
    leftover = [t.file_id for t in tasks if t.file_id not in recorder.done]
    summary = recorder.summary
    config_problem = recorder.config_problem
    # leftovers: a worker rank was signalled (or a `config` failure stopped the job)
    summary.stopped = opts.should_stop() or (bool(leftover) and config_problem is None)
    if leftover:
        summary.released = recorder.db.release(leftover, job_id, "not started before the job stopped")
    code = 2 if config_problem else 1 if summary.failed else 0
    lines = summary.lines()
    if not tasks:  # say what is waiting elsewhere and which command moves it on
        lines += Backlog.read(recorder.db, recorder.cfg, job_id).lines()
    if config_problem:
        lines.insert(1, f"  STOPPED: configuration problem: {config_problem}")
        lines.insert(2, "  files it affected were released unchanged; fix the configuration and run again")
        print(f"legampi process: stopped: configuration problem: {config_problem}", file=sys.stderr)
    recorder.db.job_end(job_id, code, "\n".join(lines), summary.rank_rows())
    for line in lines:
        print(line, file=out)
    out.flush()
    return code
