"""Rank 0's recorder: results written to the tracking database in batches, sources removed after commit.

A file's source is removed only once its row is committed as `available` (one folder fsync per folder and
batch); a database that goes away is retried with backoff; a `config` failure releases the file unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from . import archive
from .config import Config
from .db import Database, DatabaseError, Event
from .progress import Summary
from .stream import FileResult

log = logging.getLogger("legampi.ingest")  # the name operators' log filters already use


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
