"""The `legampi rekey` command: which files to rotate, recording each result, the operator's report.

Rotating one file (crash-safe, with its pending marker) is `rekey.rekey_file`; this module lists the
`available` files not yet on the new key and claims them in batches as the ranks need them
(legampi.archived_claims: a file another live job holds is never touched; one a rotation alongside holds
is waited for at the end, one held to the end by another job is skipped and reported), records every
flush of results in one transaction (then drops the pending markers and gives the claims back), and keeps
a job row with a heartbeat so that `recover` leaves the temp files and claims of a live rekey alone. The
recorder writes on rank 0's own thread (no recorder thread here): the lazy source claims on the same one.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import archive, storage
from .archived_claims import (
    SKIPPED_EXIT,
    ArchivedClaims,
    ClaimBook,
    claim_in_batches,
    free_dead_claims,
    skipped_lines,
    start_job,
    wait_patience,
)
from .db import Database, DatabaseError, Event
from .keys import fingerprint, load_public_key
from .parallel import Executor, InProcess, Job, NotReady, execute
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
    """Rank 0: buffers results, records each flush in one transaction, then drops the pending markers and
    gives the files' claims back (BOOK, which also keeps the job's heartbeat)."""

    def __init__(self, db: Database, batch_size: int, flush_interval: float, book: ClaimBook | None = None) -> None:
        self.db, self.batch_size, self.flush_interval, self.book = db, max(1, batch_size), flush_interval, book
        self.job_id = book.job_id if book is not None else None
        self.buffer: list[RekeyResult] = []
        self.done: list[RekeyResult] = []
        self.last = time.monotonic()

    def add(self, r: RekeyResult) -> None:
        self.buffer.append(r)
        if len(self.buffer) >= self.batch_size:
            self.flush()
        elif self.book is not None:
            self.book.tick()

    def tick(self) -> None:
        if self.buffer and time.monotonic() - self.last >= self.flush_interval:
            self.flush()
        if self.book is not None:
            self.book.tick()

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
        if self.book is not None:  # recorded (or failed, the copy as it was): another job may take them now
            self.book.done([r.file_id for r in batch])
        for r in batch:
            (log.info if r.result != "failed" else log.error)("rekey %s: %s (file %s)", r.result, r.details, r.file_id)
        self.done += batch
        self.last = time.monotonic()


def rekey_claims(
    db: Database, job_id: str, new_fp: str, dataset: str | None = None, limit: int | None = None, batch: int = 200
) -> tuple[ArchivedClaims, int]:
    """The `available` files not yet on the new key, to claim in batches as the workers need them (at most
    LIMIT in all, BATCH per transaction), and how many are on it already. Markers left by a run that
    crashed after its commit are removed here, each under a claim."""
    rows = db.files(dataset, status="available")
    todo = sorted((r for r in rows if r["archive_key"] != new_fp), key=lambda r: r["archive_path"])
    _clear_stale_markers(db, job_id, [r for r in rows if r["archive_key"] == new_fp], batch, new_fp)
    # a row read again on the new key was rotated by another run since the listing: given back at once
    claims = ArchivedClaims(db, job_id, todo, keep=lambda r: r["archive_key"] != new_fp, limit=limit, most=batch)
    return claims, len(rows) - len(todo)


def _task(r: dict[str, Any]) -> RekeyTask:
    return RekeyTask(
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


def _clear_stale_markers(db: Database, job_id: str, rows: list[dict[str, Any]], batch: int, new_fp: str) -> None:
    """Remove the pending markers of rotations already recorded (a crash between commit and cleanup);
    an S3 object carries its rotation in its own metadata and has none."""
    marked = [
        r for r in rows if not storage.is_s3(r["archive_path"]) and pending_path(Path(r["archive_path"])).exists()
    ]
    if not marked:
        return
    got = claim_in_batches(db, job_id, marked, batch, keep=lambda r: r["archive_key"] == new_fp)
    try:
        for r in got.rows:
            marker = pending_path(Path(r["archive_path"]))
            try:
                stale = marker.exists() and read_pending(marker)["new_checksum"] == r["archive_checksum"]
            except RekeyError as exc:
                log.error("%s", exc)
                continue
            if stale:
                marker.unlink()
                archive.fsync_dir(marker.parent)
    finally:
        db.release_archived([r["file_id"] for r in got.rows], job_id)


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
    rotate files. Exit 0 all rotated, 1 some failed, 2 could not start, 5 files held by other live jobs."""
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
    """Rank 0's `rekey`: claim the files not yet on the new key in batches as the workers need them,
    rotate them through EX, record every flush, print the report. Exit 0 all rotated (by this run or by
    another rotation that ran alongside), 1 some failed, 5 (SKIPPED_EXIT) none failed but other live jobs
    held some files to the end. A job row with a heartbeat keeps a live rekey's claims and temp files."""
    out = out or sys.stdout
    free_dead_claims(db, cfg.func.claim_timeout)
    job_id = start_job(db, "rekey", ex.ranks, make_job_id)
    book = ClaimBook(db, job_id, cfg.func.batch_size, cfg.func.flush_interval)
    try:
        claims, on_key = rekey_claims(db, job_id, keys.new_fp, dataset, limit, cfg.func.batch_size)
        recorder = RekeyRecorder(db, cfg.func.batch_size, cfg.func.flush_interval, book)
        _rotate(ex, claims, recorder, keys, cfg)
    finally:
        book.close()
    skipped = claims.skipped
    for row, why in skipped:
        log.warning("rekey skipped: %s: %s (file %s)", row["archive_path"], why, row["file_id"])
    already = on_key + len(claims.dropped)
    lines = rekey_lines(recorder.done, keys, already, len(claims.rows), cfg, skipped)
    code = 1 if any(r.result == "failed" for r in recorder.done) else SKIPPED_EXIT if skipped else 0
    db.job_end(job_id, code, "\n".join(lines[-2:]))
    for line in lines:
        print(line, file=out)
    out.flush()
    return code


def _rotate(ex: Executor, claims: ArchivedClaims, recorder: RekeyRecorder, keys: RekeyKeys, cfg: Any) -> None:
    """Every file CLAIMS gives through EX, as its workers need them; then, here on rank 0, the files other
    jobs held meanwhile and let go without them being on the new key (waiting for another rotation's)."""
    progress = Progress(0, 0, logger=log)

    def tasks(rows: Sequence[dict[str, Any]]) -> list[RekeyTask]:
        out = [_task(r) for r in rows]
        progress.total_files += len(out)
        progress.total_bytes += sum(t.size for t in out)
        return out

    def on_result(r: RekeyResult) -> None:
        claims.note(r.bytes_read)
        progress.add(r.bytes_read, r.result == "failed")
        recorder.add(r)

    def tick() -> None:
        recorder.tick()
        progress.tick()

    size, name = (lambda t: t.size), (lambda t: t.archive_path)
    ex.run([], on_result, tick=tick, key=size, name=name, more=lambda workers: tasks(claims.more(workers)))
    recorder.flush()
    if recorder.book is not None:  # ours back before waiting for theirs: another rotation may wait for ours
        recorder.book.flush()
    here = None
    while last := claims.finish("rekey", wait_patience(cfg.func.flush_interval), tick, cfg.func.claim_timeout):
        here = here or InProcess(load_rotator(keys, 0))
        here.run(tasks(last), on_result, tick=tick, key=size, name=name)
        recorder.flush()
        if recorder.book is not None:
            recorder.book.flush()
    progress.close()


def rekey_lines(
    results: Sequence[RekeyResult],
    keys: RekeyKeys,
    already: int,
    planned: int,
    cfg: Any,
    skipped: Sequence[tuple[dict[str, Any], str]] = (),
) -> list[str]:
    """The operator's report: one line per file (and per file skipped), a summary, and what to do next."""
    counts = {k: sum(r.result == k for r in results) for k in ("rekeyed", "recovered", "failed")}
    lines = [
        f"  {r.result.upper()} {r.details} (rank {r.rank}, {r.seconds:.2f}s)"
        for r in sorted(results, key=lambda r: r.archive_path)
    ]
    lines += skipped_lines(skipped, lambda r: str(r["archive_path"]))
    mb = sum(r.bytes_read for r in results) / 1e6
    lines.append(
        f"rekey to archive key {keys.new_fp} (from {keys.old_fp}): {planned} file(s) to rotate, "
        f"{counts['rekeyed']} rekeyed, {counts['recovered']} recovered from an interrupted run, "
        f"{counts['failed']} failed, {already} already on the new key, {len(skipped)} skipped because "
        f"claimed by another live job; {mb:.1f} MB read"
    )
    if counts["failed"]:
        lines.append("some files were not rotated: fix the causes above and rerun `legampi rekey` (it resumes)")
    elif skipped:
        lines.append(
            f"{len(skipped)} file(s) were held by other live jobs (listed above) and not touched: run `legampi "
            "rekey` again once they have ended (`legampi recover` frees the claims of jobs that died)"
        )
    elif fingerprint(load_public_key(cfg.crypto.archive_public_key)) != keys.new_fp:
        lines.append(
            f"REMINDER: edit {cfg.path or 'the configuration'}: set [crypto] archive_public_key to the new "
            "public key and archive_secret_key/archive_passphrase to the new secret key; until then new "
            "files are still archived for the old key (rerun rekey afterwards to catch them)"
        )
    return lines
