"""Rank 0's recorder: results written to the tracking database in batches, sources removed after commit.

A file's source is removed only once its row is committed as `available` (one folder fsync per folder and
batch); a database that goes away is retried with backoff, and one that stays away stops the job with
exit status 4 (`LOST_DATABASE`) and deletes nothing; a `config` failure releases the file unchanged.

The writes run on a recorder thread (issue 18): rank 0's dispatch loop only counts the result and puts
it on a bounded queue, so it never waits for a commit or an unlink. The thread OWNS the connection from
the first result until `close`: the main thread does not touch `db` in between (the heartbeat goes to the
thread too), so one connection serves both without locking, and a reconnect (which replaces `db`) happens
where the connection is used. A second connection would add a second SQLite writer contending for the
lock with the first. `LEGAMPI_RECORDER=inline` keeps every write on rank 0's own thread, as before: the
A/B baseline of benchmarks/rank0_scaling.py.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, TypeVar

from . import archive
from .config import Config
from .db import Database, DatabaseError, Event
from .progress import Summary
from .recovery import HEARTBEAT_INTERVAL as HEARTBEAT
from .stream import FileResult

T = TypeVar("T")
log = logging.getLogger("legampi.ingest")  # the name operators' log filters already use

LOST_DATABASE = 4  # exit status: the tracking database stayed away; nothing deleted, rerun records the rest
MODE_ENV = "LEGAMPI_RECORDER"  # "inline": write on rank 0's loop thread (benchmark baseline); else a thread
QUEUE_BATCHES = 4  # the queue holds at most this many batches: back-pressure on the loop, memory flat
_WAIT = 0.1  # seconds between checks for a dead recorder thread while waiting on it
SWITCH_INTERVAL = 0.0005  # seconds: rank 0's GIL hand-over between the loop and the recorder thread
UNLINK_THREADS = 8  # a batch's sources are removed this many at a time (metadata round trips overlap)


def threaded_by_default() -> bool:
    return os.environ.get(MODE_ENV, "thread").strip().lower() != "inline"


def _unlink(src: Path) -> OSError | None:
    try:
        src.unlink(missing_ok=True)
    except OSError as exc:  # reported by the caller, with the file's name
        return exc
    return None


class Recorder:
    """Buffers results on rank 0 and writes them in batches: one transaction, many rows per statement.

    Sources are removed only after their row is committed as `available` (unless keep_processed). A
    database that goes away is retried with backoff; if it stays away, `lost` names why, nothing more is
    written or deleted, and the job stops handing out work (`should_stop`) and exits LOST_DATABASE.
    """

    def __init__(
        self,
        db: Database,
        cfg: Config,
        job_id: str,
        reconnect: Callable[[], Database] | None = None,
        retries: int = 5,
        backoff: float = 1.0,
        threaded: bool | None = None,
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
        self.lost: str | None = None  # why the database is gone for good: the job stops, deletes nothing
        self.removed: list[Event] = []  # `source-removed` events not yet written: they ride the next batch
        self.unrecorded = 0  # archived files whose rows could not be written once the database was lost
        self.threaded = threaded_by_default() if threaded is None else threaded
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(max(64, QUEUE_BATCHES * cfg.func.batch_size))
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None  # what ended the thread: raised on rank 0's thread
        self._unlinker: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ rank 0's loop (main thread)
    def add(self, result: FileResult) -> None:
        """One result: counted here, written (on the recorder thread, or inline) in a batch."""
        self.done.add(result.file_id)
        if result.status == "failed" and result.error_kind == "config":
            if self.config_problem is None:
                self.config_problem = result.error or "configuration problem"
            self._handle("release", result)
            return
        self.summary.add(result)
        self._handle("result", result)

    def should_stop(self) -> bool:
        """Start no new file: a `config` failure, or the database is gone for good."""
        return self.config_problem is not None or self.lost is not None

    def tick(self) -> None:
        """Called while rank 0 waits: flush on time, keep the job's heartbeat fresh (the thread does both
        on its own; here only its failure is surfaced)."""
        if self.threaded:
            self._raise_failure()
        else:
            self._on_time()

    def flush(self) -> None:
        """Write everything received so far; returns once it is written (or the database is lost)."""
        if not self.threaded:
            self._drain()
            return
        if self._thread is None:
            return
        done = threading.Event()
        self._put(("flush", done))
        while not done.wait(_WAIT):
            self._raise_failure()
        self._raise_failure()

    def call(self, fn: Callable[[Database], T]) -> T:
        """FN(connection) where the connection is used: on the recorder thread once it runs (it owns the
        connection then), else here. `process` claims its next files this way, so the one connection never
        serves two threads at once and SQLite never sees a second writer from this job."""
        if not self.threaded or self._thread is None:
            return fn(self.db)
        fut: Future[T] = Future()
        self._put(("call", (fn, fut)))
        while True:
            try:
                return fut.result(timeout=_WAIT)
            except FutureTimeout:
                self._raise_failure()

    def close(self) -> None:
        """Flush, end the thread; the connection is rank 0's thread's again (job_end, release)."""
        if self.threaded and self._thread is not None:
            self.flush()
            self._put(("stop", None))
            self._thread.join()
            self._raise_failure()
        if self._unlinker is not None:
            self._unlinker.shutdown()
            self._unlinker = None
        self.threaded = False
        self._drain()

    def _handle(self, kind: str, result: FileResult) -> None:
        if not self.threaded:
            self._do(kind, result)
            return
        if self._thread is None:
            # The two threads share the GIL: a short switch interval keeps the loop from waiting up to
            # 5 ms (Python's default) behind the recorder's CPU work whenever a result arrives.
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
            self._thread = threading.Thread(target=self._serve, name="legampi-recorder", daemon=True)
            self._thread.start()
        self._put((kind, result))

    def _put(self, item: tuple[str, Any]) -> None:
        """Queue ITEM for the thread; waits while the queue is full (back-pressure) unless the thread died."""
        while True:
            self._raise_failure()
            try:
                self._queue.put(item, timeout=_WAIT)
                return
            except queue.Full:
                continue

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    # ------------------------------------------------------------------ the writing side (thread or inline)
    def _serve(self) -> None:
        """The recorder thread: results into batches, batches into the database, sources removed."""
        try:
            while True:
                try:
                    kind, item = self._queue.get(timeout=self._until_due())
                except queue.Empty:
                    self._on_time()
                    continue
                if kind == "stop":
                    self._drain()
                    return
                if kind == "flush":
                    self._drain()
                    item.set()
                elif kind == "call":  # the caller waits on the future; its error is the caller's
                    fn, fut = item
                    try:
                        fut.set_result(fn(self.db))
                    except Exception as exc:  # noqa: BLE001 - handed to the waiting caller, raised there
                        fut.set_exception(exc)
                else:
                    self._do(kind, item)
                    self._on_time()
        except BaseException as exc:  # noqa: BLE001 - handed to rank 0's thread, raised there (never lost)
            self._failure = exc

    def _until_due(self) -> float:
        now = time.monotonic()
        due = self.last_flush + self.cfg.func.flush_interval if self.buffer else self.last_beat + HEARTBEAT
        return max(0.01, due - now)

    def _do(self, kind: str, result: FileResult) -> None:
        if kind == "release":
            self._release_for_config(result)
        else:
            self._take(result)

    def _take(self, result: FileResult) -> None:
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
        self.buffer.append(result)
        if len(self.buffer) >= self.cfg.func.batch_size:
            self._write()

    def _release_for_config(self, result: FileResult) -> None:
        """The configuration, not the file, failed: give the file back untouched (`received`, with an
        event naming the reason); `add` remembered the problem, which stops the job (run_process)."""
        reason = f"configuration problem, not the file's: {result.error}"
        if self.lost is None:
            try:
                self._with_retry(lambda: self.db.release([result.file_id], self.job_id, reason))
            except DatabaseError as exc:
                self._lose(exc)
        log.error(
            "CONFIG %s (file %s) released: %s",
            result.rel,
            result.file_id,
            result.error,
            extra={"job": self.job_id, "file_id": result.file_id, "file_name": result.rel, "kind": "config"},
        )

    def _on_time(self) -> None:
        now = time.monotonic()
        if self.buffer and now - self.last_flush >= self.cfg.func.flush_interval:
            self._write()
        elif now - self.last_beat >= HEARTBEAT and self.lost is None:
            try:
                self._with_retry(lambda: self.db.job_heartbeat(self.job_id))
            except DatabaseError as exc:
                self._lose(exc)
            self.last_beat = now

    def _write(self) -> None:
        """The buffered batch: one transaction, then its sources removed (never before the commit)."""
        if not self.buffer:
            return
        batch, self.buffer = self.buffer, []
        if self.lost is not None:
            self.unrecorded += sum(r.status == "available" for r in batch)
            return
        try:
            recorded = self._with_retry(lambda: self.db.record_results(batch, self.job_id, self.removed))
            self.removed = []  # committed with the batch: one commit (one log fsync) per batch, not two
        except DatabaseError as exc:
            self._lose(exc)
            self.unrecorded += sum(r.status == "available" for r in batch)
            return
        self.last_flush = self.last_beat = time.monotonic()
        if not self.cfg.workspaces.keep_processed:
            self._remove_sources(recorded)

    def _remove_sources(self, recorded: list[FileResult]) -> None:
        """Unlink the committed batch's sources; on the recorder thread by UNLINK_THREADS at once (an unlink
        is one metadata round trip on a parallel filesystem: in turn they would cap the files/s)."""
        removed, folders = [], set()
        srcs = [self.cfg.workspaces.processing / r.rel for r in recorded]
        if self.threaded and len(srcs) > 1:
            if self._unlinker is None:
                self._unlinker = ThreadPoolExecutor(UNLINK_THREADS, thread_name_prefix="legampi-unlink")
            outcomes = list(self._unlinker.map(_unlink, srcs))
        else:
            outcomes = [_unlink(src) for src in srcs]
        for r, src, exc in zip(recorded, srcs, outcomes, strict=True):
            if exc is None:
                folders.add(src.parent)
                removed.append(Event(r.file_id, None, "source-removed", "available", str(src)))
            else:
                log.error("archived and recorded, but cannot remove source %s: %s", src, exc)
        for folder in folders:  # one fsync per folder and batch, not per file
            archive.fsync_dir(folder)
        self.removed += removed  # written with the next batch, or by `_drain` at the end

    def _drain(self) -> None:
        """Everything: the buffered batch, then the audit events no later batch will carry."""
        self._write()
        if self.removed and self.lost is None:
            try:
                self._with_retry(lambda: self.db.add_events(self.removed, self.job_id))
                self.removed = []
            except DatabaseError as exc:  # the rows are committed: only their audit events are missing
                self._lose(exc)

    def _lose(self, exc: DatabaseError) -> None:
        """The database stayed away through every retry: record nothing more, delete nothing more."""
        if self.lost is None:
            self.lost = str(exc)  # DatabaseError's text never holds the password (db.connection)
            log.error("lost the tracking database: %s; no new files are handed out", self.lost)

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

    # ------------------------------------------------------------------ the end of a job that lost it
    def lost_message(self) -> str:
        return (
            f"lost the tracking database: {self.lost}; {self.unrecorded} archived file(s) not recorded, "
            "nothing deleted; rerun `legampi process` once the database is back"
        )

    def end_lost(self, out: Any) -> int:
        """The job's end without its database: the summary and the message, no job row; LOST_DATABASE."""
        lines = self.summary.lines()
        lines.insert(1, f"  STOPPED: {self.lost_message()}")
        for line in lines:
            print(line, file=out)
        out.flush()
        print(f"legampi process: {self.lost_message()}", file=sys.stderr)
        log.error("%s", self.lost_message())
        return LOST_DATABASE
