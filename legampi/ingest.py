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
from .config import Config
from .db import Database, DatabaseError, Event, chunks
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
                out.skipped.append(f"{file_name} ({r['status']})")
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


class Recorder:
    """Buffers results on rank 0 and writes them in batches: one transaction, many rows per statement.

    Sources are removed only after their row is committed as `available` (unless keep_processed).
    A database that goes away is retried with backoff; if it stays away the error propagates and the
    job ends non-zero, leaving archived-but-unrecorded files for `legampi recover` to record.
    """

    def __init__(
        self,
        db: Database,
        cfg: Config,
        job_id: str,
        reconnect: Callable[[], Database] | None = None,
        retries: int = 5,
        backoff: float = 1.0,
    ):
        self.db, self.cfg, self.job_id = db, cfg, job_id
        self.reconnect, self.retries, self.backoff = reconnect, retries, backoff
        self.buffer: list[FileResult] = []
        self.summary = Summary(job_id)
        self.done: set[str] = set()  # file ids with a result
        self.datasets: dict[str, str] = {}  # file_id -> dataset_id, for log lines
        self.last_flush = time.monotonic()
        self.last_beat = time.monotonic()
        self.config_problem: str | None = None  # first `config` failure: the job stops (see add)

    def add(self, result: FileResult) -> None:
        if result.status == "failed" and result.error_kind == "config":
            self._release_for_config(result)
            return
        self.buffer.append(result)
        self.summary.add(result)
        self.done.add(result.file_id)
        ds = self.datasets.get(result.file_id, "")
        extra = {  # structured fields of JSON logs (logs.FIELDS); rank and host: the worker's
            "job": self.job_id,
            "rank": result.rank,
            "host": result.host,
            "dataset_id": ds,
            "file_id": result.file_id,
            "file_name": result.rel,
            "kind": result.error_kind,
            "bytes": result.bytes_read,
            "seconds": round(result.seconds, 3),
        }
        if result.status == "failed":
            log.error("FAILED %s (dataset %s, file %s): %s", result.rel, ds, result.file_id, result.error, extra=extra)
        else:
            log.info(
                "archived %s (dataset %s, file %s) -> %s",
                result.rel,
                ds,
                result.file_id,
                result.archive_path,
                extra=extra,
            )
        if len(self.buffer) >= self.cfg.func.batch_size:
            self.flush()

    def _release_for_config(self, result: FileResult) -> None:
        """The configuration, not the file, failed: give the file back untouched (`received`, with an
        event naming the reason) and remember the problem, which stops the job (run_process)."""
        self.done.add(result.file_id)
        reason = f"configuration problem, not the file's: {result.error}"
        self._with_retry(lambda: self.db.release([result.file_id], self.job_id, reason))
        log.error(
            "CONFIG %s (file %s) released: %s",
            result.rel,
            result.file_id,
            result.error,
            extra={"job": self.job_id, "file_id": result.file_id, "file_name": result.rel, "kind": "config"},
        )
        if self.config_problem is None:
            self.config_problem = result.error or "configuration problem"

    def tick(self) -> None:
        """Called while rank 0 waits: flush on time, keep the job's heartbeat fresh."""
        now = time.monotonic()
        if self.buffer and now - self.last_flush >= self.cfg.func.flush_interval:
            self.flush()
        elif now - self.last_beat >= 30:
            self._with_retry(lambda: self.db.job_heartbeat(self.job_id))
            self.last_beat = now

    def flush(self) -> None:
        if not self.buffer:
            return
        batch, self.buffer = self.buffer, []
        try:
            recorded = self._with_retry(lambda: self.db.record_results(batch, self.job_id))
        except BaseException:
            self.buffer = batch + self.buffer
            raise
        self.last_flush = self.last_beat = time.monotonic()
        if not self.cfg.workspaces.keep_processed:
            removed, folders = [], set()
            for r in recorded:
                src = self.cfg.workspaces.processing / r.rel
                try:
                    src.unlink(missing_ok=True)
                    folders.add(src.parent)
                    removed.append(Event(r.file_id, None, "source-removed", "available", str(src)))
                except OSError as exc:
                    log.error("archived and recorded, but cannot remove source %s: %s", src, exc)
            for folder in folders:  # one fsync per folder and batch, not per file
                archive.fsync_dir(folder)
            if removed:
                self._with_retry(lambda: self.db.add_events(removed, self.job_id))

    def _with_retry(self, fn: Callable[[], Any]) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except DatabaseError as exc:
                if attempt == self.retries or self.reconnect is None:
                    raise
                log.error("database error (%s); reconnecting, attempt %d of %d", exc, attempt + 1, self.retries)
                time.sleep(self.backoff * (2**attempt))
                try:
                    self.db.close()
                    self.db = self.reconnect()
                except DatabaseError as exc2:
                    log.error("reconnect failed: %s", exc2)
        raise AssertionError("unreachable")


@dataclass
class Summary:
    job_id: str
    files: int = 0
    available: int = 0
    failed: int = 0
    bytes: int = 0
    bytes_available: int = 0
    seconds: float = 0.0
    ranks: dict[int, list[float]] = field(default_factory=dict)  # rank -> [files, bytes, seconds]
    hosts: dict[int, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    released: int = 0
    stopped: bool = False

    def add(self, r: FileResult) -> None:
        """Fold one result in (rank 0 keeps these totals, not every result: memory stays O(failures))."""
        self.files += 1
        self.bytes += r.bytes_read
        if r.status == "available":
            self.available += 1
            self.bytes_available += r.bytes_read
        else:
            self.failed += 1
            self.failures.append(f"{r.rel} (file {r.file_id}): {r.error}")
        acc = self.ranks.setdefault(r.rank, [0, 0, 0.0])
        acc[0] += 1
        acc[1] += r.bytes_read
        acc[2] += r.seconds
        self.hosts[r.rank] = r.host

    def rank_rows(self) -> list[tuple[int, str, int, int, float]]:
        return [(k, self.hosts.get(k, ""), int(v[0]), int(v[1]), float(v[2])) for k, v in sorted(self.ranks.items())]

    def lines(self) -> list[str]:
        mbs = self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0
        out = [
            f"job {self.job_id}: {self.files} file(s), {self.available} available, {self.failed} failed, "
            f"{self.bytes / 1e6:.1f} MB in {self.seconds:.1f}s = {mbs:.1f} MB/s overall "
            f"({self.bytes_available / 1e6:.1f} MB available, "
            f"{(self.bytes - self.bytes_available) / 1e6:.1f} MB failed)"
            + (" (stopped early by signal)" if self.stopped else "")
        ]
        for rank, host, files, nbytes, secs in self.rank_rows():
            rate = nbytes / secs / 1e6 if secs > 0 else 0.0
            out.append(
                f"  rank {rank} on {host}: {files} file(s), {nbytes / 1e6:.1f} MB, busy {secs:.1f}s, {rate:.1f} MB/s"
            )
        if self.released:
            out.append(f"  {self.released} claimed file(s) not started were released for the next run")
        out += [f"  FAILED {f}" for f in self.failures]
        return out


class Progress:
    """Rank 0's progress: a live line on a terminal, a log line every interval in batch jobs."""

    def __init__(self, total_files: int, total_bytes: int, interval: float, stream: Any = None):
        import sys

        self.total_files, self.total_bytes, self.interval = total_files, total_bytes, interval
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.files = self.bytes = self.failed = 0
        self.start = self.last = time.monotonic()

    def add(self, r: FileResult) -> None:
        self.files += 1
        self.bytes += r.bytes_read
        self.failed += r.status == "failed"

    def line(self) -> str:
        el = max(time.monotonic() - self.start, 1e-9)
        rate = self.bytes / el
        left = (self.total_bytes - self.bytes) / rate if rate > 0 else float("nan")
        eta = f"{left / 60:.1f} min" if left == left else "?"
        return (
            f"{self.files}/{self.total_files} files, {self.bytes / 1e9:.2f}/{self.total_bytes / 1e9:.2f} GB, "
            f"{rate / 1e6:.1f} MB/s, {self.failed} failed, ~{eta} left"
        )

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty and (force or now - self.last >= 0.5):
            self.stream.write("\r" + self.line() + "\x1b[K")
            self.stream.flush()
            self.last = now
        elif not self.tty and (force or now - self.last >= self.interval):
            log.info("progress: %s", self.line(), extra={"bytes": self.bytes, "seconds": round(now - self.start, 3)})
            self.last = now

    def close(self) -> None:
        if self.tty:
            self.tick(force=True)
            self.stream.write("\n")


def run_process(
    cfg: Config,
    team: Any,
    connect: Callable[[], Database],
    *,
    schedule: str = "dynamic",
    branches: int = 1,
    branch: int = 1,
    retry_failed: bool = False,
    dataset: str | None = None,
    limit: int | None = None,
    recover_first: bool = True,
    progress_interval: float = 60.0,
    should_stop: Callable[[], bool] = lambda: False,
    out: Any = None,
) -> int:
    """`legampi process` on every rank: rank 0 plans, claims and records; workers stream files.

    Exit status: 0 when every file handed out was archived (or the job was stopped by a signal and
    released what it had not started), 1 when some failed, 2 when the job could not start.
    """
    import sys

    from .stream import PipelineContext, process_file, process_file_overlapped

    out = out or sys.stdout
    db: Database | None = None
    ctx = None
    problem = ""
    if team.coordinator:
        try:
            db = connect()
            db.require_schema()
        except DatabaseError as exc:
            problem = str(exc)
    if not team.coordinator or team.size == 1:
        try:
            ctx = PipelineContext.from_config(cfg)
        except Exception as exc:  # noqa: BLE001 - any key/passphrase problem must reach rank 0 as text
            problem = f"cannot prepare the pipeline: {exc}"
    if not team.ready(problem, log):
        return 2
    # config hook (issue 12): keys the files need but the configuration lacks stop the job here, before
    # recover or plan claim anything; every rank still meets rank 0 in team.run and team.bcast below.
    refused: list[str] = []
    if team.coordinator:
        from .preflight import job_problems

        assert db is not None
        refused = job_problems(db, cfg, retry_failed, dataset)
        for line in refused:
            log.error("not starting: %s", line)
            print(f"legampi process: not starting: {line}", file=sys.stderr)

    host = socket.gethostname()

    def work(task: FileTask) -> Any:
        if team.size == 1:
            return process_file(task, ctx, rank=team.rank)
        return process_file_overlapped(task, ctx, rank=team.rank)  # the fsync overlaps the next file

    code = 0
    if refused:
        team.run([], work, lambda r: None)  # sends every worker STOP
        code = 2
    elif team.coordinator:
        assert db is not None
        job_id = make_job_id()
        db.job_start(job_id, "process", host, team.size)
        if recover_first:
            for line in recover(db, cfg, job_id).lines():
                log.info("recover: %s", line)
        p = plan(db, cfg, job_id, branches, branch, retry_failed, dataset, limit)
        log.info(
            "job %s: %d file(s) claimed, %d byte(s), %d worker rank(s), schedule %s",
            job_id,
            len(p.tasks),
            sum(t.size or 0 for t in p.tasks),
            max(team.size - 1, 1),
            schedule,
        )
        recorder = Recorder(db, cfg, job_id, reconnect=connect)
        recorder.datasets = {t.file_id: t.dataset_id for t in p.tasks}
        progress = Progress(len(p.tasks), sum(t.size or 0 for t in p.tasks), progress_interval)

        def on_result(r: FileResult) -> None:
            recorder.add(r)
            if r.error_kind != "config":
                progress.add(r)

        def stop() -> bool:  # a signal, or a `config` failure: no new files, in-flight ones finish
            return should_stop() or recorder.config_problem is not None

        def tick() -> None:
            recorder.tick()
            progress.tick()

        t0 = time.monotonic()
        team.run(p.tasks, work, on_result, tick, stop, schedule, key=lambda t: t.size or 0, name=lambda t: t.rel)
        recorder.flush()
        progress.close()
        leftover = [t.file_id for t in p.tasks if t.file_id not in recorder.done]
        summary = recorder.summary
        summary.seconds = time.monotonic() - t0
        config_problem = recorder.config_problem
        # leftovers: a worker rank was signalled (or a `config` failure stopped the job)
        summary.stopped = should_stop() or (bool(leftover) and config_problem is None)
        if leftover:
            summary.released = recorder.db.release(leftover, job_id, "not started before the job stopped")
        code = 2 if config_problem else 1 if summary.failed else 0
        lines = summary.lines()
        if config_problem:
            lines.insert(1, f"  STOPPED: configuration problem: {config_problem}")
            lines.insert(2, "  files it affected were released unchanged; fix the configuration and run again")
            print(f"legampi process: stopped: configuration problem: {config_problem}", file=sys.stderr)
        recorder.db.job_end(job_id, code, "\n".join(lines), summary.rank_rows())
        for line in lines:
            print(line, file=out)
        out.flush()
    else:
        team.run(None, work, lambda r: None, should_stop=should_stop, schedule=schedule)
    return int(team.bcast(code))
