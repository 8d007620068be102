"""What rank 0 does around the pipeline: plan and claim, record results in batches, recover after crashes.

Plain Python: it neither knows nor cares how many ranks there are. ``parallel`` moves tasks and results;
this module decides which files to process and makes the database the checkpoint.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import archive
from .backlog import Backlog
from .config import Config
from .db import Database, DatabaseError, chunks
from .parallel import Executor, Job, NotReady, execute
from .progress import Progress, record_crash, skip_reason, with_job
from .recorder import Recorder
from .recovery import recover
from .stream import FileResult, FileTask
from .workspace import branch_file_names, make_job_id, scan

log = logging.getLogger("legampi.ingest")


PLAN_COLUMNS = (
    "file_id",
    "dataset_id",
    "file_name",
    "status",
    "md5",
    "sha256",
    "transfer_checksum",
    "transfer_checksum_type",
    "claimed_by",
    "claimed_at",
    "error",
)


@dataclass
class Plan:
    tasks: list[FileTask]
    unregistered: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # registered but not eligible (e.g. failed, claimed)


def plan(
    db: Database,
    cfg: Config,
    job_id: str,
    branches: int = 1,
    branch: int = 1,
    retry_failed: bool = False,
    dataset: str | None = None,
    limit: int | None = None,
) -> Plan:
    """List processing, join with the database, claim eligible files for this job in one transaction.

    With --branches, the share is taken over the sorted names of all *registered* files, which every
    array task sees alike, not over the live listing (workspace.branch_file_names says why).
    """
    listing = {file_name: st.st_size for file_name, st in scan(cfg.workspaces.processing)}
    registered = db.file_names() if branches > 1 else []
    file_names = branch_file_names(listing, registered, branches, branch)
    eligible = ("pending", "received") + (("failed",) if retry_failed else ())
    out = Plan([])
    # One transaction for all claims; read in chunks so rank 0's peak memory stays near one small task
    # per file, whatever the listing size.
    with db.transaction():
        _claim_chunks(db, out, file_names, listing, job_id, eligible, retry_failed, dataset, limit)
    for file_name in out.unregistered:
        log.warning("unregistered file in processing, left alone: %s", cfg.workspaces.processing / file_name)
    if any(" claimed by job " in x for x in out.skipped):
        jobs = {j["job_id"]: j for j in db.running_jobs()}
        out.skipped = [with_job(x, jobs) for x in out.skipped]
    return out


def _claim_chunks(
    db: Database,
    out: Plan,
    file_names: list[str],
    listing: dict[str, int],
    job_id: str,
    eligible: tuple[str, ...],
    retry_failed: bool,
    dataset: str | None,
    limit: int | None,
) -> None:
    """Claim the eligible ones among FILE_NAMES, 1000 at a time, and add them to OUT as tasks."""
    for chunk in chunks([n for n in file_names if not archive.is_temp_name(n)], 1000):
        rows = {r["file_name"]: r for r in db.files(names=chunk, columns=PLAN_COLUMNS)}
        wanted = []
        for file_name in chunk:
            r = rows.get(file_name)
            if r is None:
                out.unregistered.append(file_name)
            elif r["status"] in eligible and (dataset is None or r["dataset_id"] == dataset):
                wanted.append(r)
            elif r["status"] != "available":
                out.skipped.append(skip_reason(r))
        if limit is not None:
            wanted = wanted[: max(0, limit - len(out.tasks))]
        got = set(db.claim([r["file_id"] for r in wanted], job_id, retry_failed=retry_failed))
        out.tasks += [
            FileTask(
                r["file_id"],
                r["dataset_id"],
                r["file_name"],
                r["md5"],
                r["sha256"],
                listing[r["file_name"]],
                r["transfer_checksum"],
                r["transfer_checksum_type"],
            )
            for r in wanted
            if r["file_id"] in got
        ]


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
    released what it had not started), 1 when some failed, 2 when the job could not start.
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
    """Rank 0's `process`: refuse a job the configuration cannot do, recover, plan and claim, run the
    claimed files through EX, record every result, release what was not started, print the summary."""
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
    p = plan(db, cfg, job_id, opts.branches, opts.branch, opts.retry_failed, opts.dataset, opts.limit)
    total = sum(t.size or 0 for t in p.tasks)
    log.info(
        "job %s: %d file(s) claimed, %d byte(s), %d worker rank(s), schedule %s",
        job_id,
        len(p.tasks),
        total,
        max(ex.ranks - 1, 1),
        opts.schedule,
    )
    recorder = Recorder(db, cfg, job_id, reconnect=connect)
    recorder.summary.skipped = p.skipped
    for line in p.skipped:
        log.info("skipped %s", line)
    recorder.datasets = {t.file_id: t.dataset_id for t in p.tasks}
    progress = Progress(len(p.tasks), total, opts.progress_interval, logger=log)

    def on_result(r: FileResult) -> None:
        recorder.add(r)
        if r.error_kind != "config":
            progress.add(r.bytes_read, r.status == "failed")

    def tick() -> None:
        recorder.tick()
        progress.tick()

    t0 = time.monotonic()
    with record_crash(recorder, job_id):
        _run(ex, p.tasks, on_result, tick, opts, recorder)
    recorder.flush()
    progress.close()
    recorder.summary.seconds = time.monotonic() - t0
    return _finish(recorder, p.tasks, job_id, opts, out or sys.stdout)


def _run(
    ex: Executor, tasks: list[FileTask], on_result: Any, tick: Any, opts: ProcessOptions, recorder: Recorder
) -> None:
    """Every claimed file through EX; a signal or a `config` failure starts no new file."""
    ex.run(
        tasks,
        on_result,
        tick=tick,
        # a signal, or a `config` failure: no new files, in-flight ones finish
        should_stop=lambda: opts.should_stop() or recorder.config_problem is not None,
        schedule=opts.schedule,
        key=lambda t: t.size or 0,
        name=lambda t: t.rel,
    )


def _finish(recorder: Recorder, tasks: list[FileTask], job_id: str, opts: ProcessOptions, out: Any) -> int:
    """Release the claimed files that were not started, end the job row, print the summary; the status."""
    import sys

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
