"""The `legampi rekey` command: which files to rotate, recording each result, the operator's report.

Rotating one file (crash-safe, with its pending marker) is `rekey.rekey_file`; this module lists the
`available` files not yet on the new key, spreads them over the ranks, records every flush of results in
one transaction (then drops the pending markers), and keeps a job row with a heartbeat so that `recover`
leaves the temp files of a live rekey alone.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import archive, storage
from .db import Database, DatabaseError, Event
from .keys import fingerprint, load_public_key
from .parallel import Executor, Job, NotReady, execute
from .progress import Progress
from .rekey import (
    RekeyError,
    RekeyKeys,
    RekeyResult,
    RekeyTask,
    clear_pending,
    load_rekey_keys,
    pending_path,
    read_pending,
    rekey_file,
)
from .workspace import make_job_id

log = logging.getLogger("legampi.rekey")


class RekeyRecorder:
    """Rank 0: buffers results, records each flush in one transaction, then drops the pending markers."""

    def __init__(self, db: Database, batch_size: int, flush_interval: float, job_id: str | None = None) -> None:
        self.db, self.batch_size, self.flush_interval, self.job_id = db, max(1, batch_size), flush_interval, job_id
        self.buffer: list[RekeyResult] = []
        self.done: list[RekeyResult] = []
        self.last = time.monotonic()

    def add(self, r: RekeyResult) -> None:
        self.buffer.append(r)
        if len(self.buffer) >= self.batch_size:
            self.flush()

    def tick(self) -> None:
        if self.buffer and time.monotonic() - self.last >= self.flush_interval:
            self.flush()
        elif self.job_id is not None and time.monotonic() - self.last >= 30:
            self.db.job_heartbeat(self.job_id)
            self.last = time.monotonic()

    def flush(self) -> None:
        if not self.buffer:
            return
        batch, self.buffer = self.buffer, []
        good = [r for r in batch if r.result != "failed"]
        rows = [
            {
                "file_id": r.file_id,
                "dataset_id": r.dataset_id,
                "old_checksum": r.old_checksum,
                "new_checksum": r.new_checksum,
                "new_key": r.new_key,
                "archive_size": r.archive_size,
                "details": f"archive key {r.old_key or '?'} -> {r.new_key}: {r.details} (rank {r.rank})",
            }
            for r in good
        ]
        with self.db.transaction():
            changed = set(self.db.record_rekeys(rows, self.job_id))
            for r in good:
                if r.file_id not in changed:
                    r.result = "failed"
                    r.details += (
                        "; NOT recorded: the row changed meanwhile (no longer available with the old "
                        "checksum); the pending marker is kept for an operator"
                    )
            self.db.add_events(
                [
                    Event(r.file_id, r.dataset_id, "rekey-failed", None, r.details)
                    for r in batch
                    if r.result == "failed"
                ],
                self.job_id,
            )
        for r in good:
            if r.file_id in changed:
                clear_pending(r.archive_path)
        for r in batch:
            (log.info if r.result != "failed" else log.error)("rekey %s: %s (file %s)", r.result, r.details, r.file_id)
        self.done += batch
        self.last = time.monotonic()


def rekey_tasks(
    db: Database, new_fp: str, dataset: str | None = None, limit: int | None = None
) -> tuple[list[RekeyTask], int]:
    """`available` files not yet on the new key (and how many already are); markers left by a run that
    crashed after its commit are removed here."""
    tasks, already = [], 0
    for r in db.files(dataset, status="available"):
        if r["archive_key"] == new_fp:
            already += 1
            if storage.is_s3(r["archive_path"]):
                continue  # an S3 object carries its rotation in its own metadata: no marker to clear
            marker = pending_path(Path(r["archive_path"]))
            if marker.exists():
                try:
                    stale = read_pending(marker)["new_checksum"] == r["archive_checksum"]
                except RekeyError as exc:
                    log.error("%s", exc)
                    continue
                if stale:
                    marker.unlink()
                    archive.fsync_dir(marker.parent)
            continue
        tasks.append(
            RekeyTask(
                r["file_id"],
                r["dataset_id"],
                r["archive_path"],
                r["archive_checksum"],
                r["archive_checksum_type"],
                r["archive_key"],
                r["md5"],
                r["sha256"],
                int(r["archive_size"] or r["size"] or 0),
            )
        )
    tasks.sort(key=lambda t: t.archive_path)
    return (tasks[:limit] if limit is not None else tasks), already


def run_rekey(
    cfg: Any,
    team: Any,
    connect: Callable[[], Database],
    new_public_key: str | os.PathLike,
    new_secret_key: str | os.PathLike | None = None,
    dataset: str | None = None,
    limit: int | None = None,
    out: Any = None,
) -> int:
    """`legampi rekey` on every rank (TEAM None: in this process): rank 0 lists and records, workers
    rotate files. Exit 0 all rotated, 1 some failed, 2 could not start."""
    keys = functools.cache(lambda: _keys(cfg, new_public_key, new_secret_key))  # loaded once per rank

    def open_() -> tuple[Database, RekeyKeys]:
        k = keys()
        try:
            db = connect()
            db.require_schema()
        except DatabaseError as exc:
            raise NotReady(str(exc)) from None
        return db, k

    job: Job[tuple[Database, RekeyKeys]] = Job(
        open=open_,
        load=lambda rank: load_rotator(keys(), rank),
        coordinate=lambda opened, ex: rotate_archive(opened[0], ex, cfg, opened[1], dataset, limit, out),
    )
    return execute(job, team, log)


def _keys(cfg: Any, new_public_key: str | os.PathLike, new_secret_key: str | os.PathLike | None) -> RekeyKeys:
    try:
        return load_rekey_keys(cfg, new_public_key, new_secret_key)
    except (RekeyError, ValueError, OSError) as exc:
        raise NotReady(str(exc)) from None


def load_rotator(keys: RekeyKeys, rank: int = 0) -> Callable[[RekeyTask], RekeyResult]:
    """A working rank's work function: rotate one file, the result labelled with RANK."""

    def rotate(task: RekeyTask) -> RekeyResult:
        r = rekey_file(task, keys)
        r.rank = rank
        return r

    return rotate


def rotate_archive(
    db: Database,
    ex: Executor,
    cfg: Any,
    keys: RekeyKeys,
    dataset: str | None = None,
    limit: int | None = None,
    out: Any = None,
) -> int:
    """Rank 0's `rekey`: list the files not yet on the new key, rotate them through EX, record every
    flush, print the report. A job row with a heartbeat makes recovery keep a live rekey's temp files."""
    out = out or sys.stdout
    job_id = make_job_id()
    db.job_start(job_id, "rekey", socket.gethostname(), ex.ranks)
    tasks, already = rekey_tasks(db, keys.new_fp, dataset, limit)
    recorder = RekeyRecorder(db, cfg.func.batch_size, cfg.func.flush_interval, job_id)
    progress = Progress(len(tasks), sum(t.size for t in tasks), logger=log)

    def on_result(r: RekeyResult) -> None:
        progress.add(r.bytes_read, r.result == "failed")
        recorder.add(r)

    def tick() -> None:
        recorder.tick()
        progress.tick()

    ex.run(tasks, on_result, tick=tick, key=lambda t: t.size, name=lambda t: t.archive_path)
    recorder.flush()
    progress.close()
    lines = rekey_lines(recorder.done, keys, already, len(tasks), cfg)
    code = 1 if any(r.result == "failed" for r in recorder.done) else 0
    db.job_end(job_id, code, "\n".join(lines[-2:]))
    for line in lines:
        print(line, file=out)
    out.flush()
    return code


def rekey_lines(results: Sequence[RekeyResult], keys: RekeyKeys, already: int, planned: int, cfg: Any) -> list[str]:
    """The operator's report: one line per file, a summary, and what to do next."""
    counts = {k: sum(r.result == k for r in results) for k in ("rekeyed", "recovered", "failed")}
    lines = [
        f"  {r.result.upper()} {r.details} (rank {r.rank}, {r.seconds:.2f}s)"
        for r in sorted(results, key=lambda r: r.archive_path)
    ]
    mb = sum(r.bytes_read for r in results) / 1e6
    lines.append(
        f"rekey to archive key {keys.new_fp} (from {keys.old_fp}): {planned} file(s) to rotate, "
        f"{counts['rekeyed']} rekeyed, {counts['recovered']} recovered from an interrupted run, "
        f"{counts['failed']} failed, {already} already on the new key; {mb:.1f} MB read"
    )
    if counts["failed"]:
        lines.append("some files were not rotated: fix the causes above and rerun `legampi rekey` (it resumes)")
    elif fingerprint(load_public_key(cfg.crypto.archive_public_key)) != keys.new_fp:
        lines.append(
            f"REMINDER: edit {cfg.path or 'the configuration'}: set [crypto] archive_public_key to the new "
            "public key and archive_secret_key/archive_passphrase to the new secret key; until then new "
            "files are still archived for the old key (rerun rekey afterwards to catch them)"
        )
    return lines
