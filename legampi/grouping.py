"""A working rank's work function (issue 15): small files streamed one after another, made durable in groups.

For a 1 KiB file the pipeline's own work is about a millisecond and each wait for the disk (data fsync,
sidecar fsync, folder fsync) about as long or longer. `GroupedWork` streams small files to their temp
names and checks them as before, but hands their commit to a `groupsync.Group`; when the group is full
(`group_files` files or GROUP_BYTES), when a big file comes, or when the worker has nothing queued
(`dispatch.serve` calls `flush`), the group is made durable in a thread while the next files stream,
and only then are its results set, so rank 0 records nothing (and removes no source) before it is on disk.
Big files keep the overlapped path (`stream.process_file_overlapped`). At most one tail (a group's sync
or a big file's finish) is left running when the next one starts.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from concurrent.futures import Future
from typing import Any

from legampi import groupsync
from legampi.formats import IngestError
from legampi.stream import QUARANTINE_KINDS, FileResult, FileTask, PipelineContext, process_file_overlapped, start_file

GROUP_FILE_BYTES = 1 << 20  # files up to this size (as registered) join a group
GROUP_BYTES = 16 << 20  # a group is synced once its files hold this much


class _Held(Future[FileResult]):
    """A file's result, held until its group is synced; waiting on it syncs the group now (a caller that
    knows nothing of `flush`, e.g. a wrapped work function, never waits forever)."""

    def __init__(self, work: GroupedWork) -> None:
        super().__init__()
        self.work = work

    def result(self, timeout: float | None = None) -> FileResult:
        if not self.done():
            self.work.flush()
        return super().result(timeout)


class GroupedWork:
    """`work(task)` for `parallel` (a Future per file) and `flush()` for the serving loop."""

    def __init__(self, ctx: PipelineContext, rank: int = 0, group_files: int = 64) -> None:
        s3 = ctx.archive is not None and ctx.archive.backend == "s3"  # nothing to fsync: commit one by one
        self.ctx, self.rank, self.group_files = ctx, rank, 0 if s3 else group_files
        self.group = groupsync.Group()
        self.held: list[tuple[Future[FileResult], FileResult]] = []
        self.bytes = 0
        self.tail: Future[Any] | None = None

    def __call__(self, task: FileTask) -> Future[FileResult]:
        if self.group_files <= 0 or task.size is None or task.size > GROUP_FILE_BYTES:
            self.flush()  # the group's results do not wait behind a big file
            out = process_file_overlapped(task, self.ctx, rank=self.rank)
            self._next_tail(out)
            return out
        fut = _Held(self)
        finish = start_file(task, self.ctx, rank=self.rank)
        with self.group.collect(fut):
            res = finish()  # checked and written; its commit joined the group (or it failed: nothing to sync)
        self.held.append((fut, res))
        self.bytes += task.size
        if len(self.held) >= self.group_files or self.bytes >= GROUP_BYTES:
            self.flush()
        return fut

    def flush(self) -> None:
        """Make the held files durable and final in a thread; their results are set when it is done."""
        if not self.held:
            return
        held, group = self.held, self.group
        self.held, self.group, self.bytes = [], groupsync.Group(), 0
        done: Future[None] = Future()

        def run() -> None:
            try:
                _sync(group, held)
            except Exception as exc:  # noqa: BLE001 - a bug (Group.sync reports per-file problems itself):
                for fut, _res in held:  # Future.result() re-raises it in the serving loop, which ends the job
                    if not fut.done():
                        fut.set_exception(exc)
            finally:
                done.set_result(None)

        threading.Thread(target=run, name="legampi-group-sync", daemon=True).start()
        self._next_tail(done)

    def _next_tail(self, tail: Future[Any]) -> None:
        """Let TAIL run; wait for the one before it (bounded memory and open files, results in order)."""
        previous, self.tail = self.tail, tail
        if previous is not None:
            concurrent.futures.wait([previous])


def _sync(group: groupsync.Group, held: list[tuple[Future[FileResult], FileResult]]) -> None:
    t0 = time.monotonic()
    errors = {id(owner): err for owner, err in group.sync()}
    share = (time.monotonic() - t0) / max(1, len(group))
    for fut, res in held:
        if id(fut) in errors:
            res.seconds += share
            if (err := errors[id(fut)]) is not None:
                _failed(res, err)
        fut.set_result(res)


def _failed(res: FileResult, err: IngestError) -> None:
    """A file whose commit failed in its group: as `stream` reports a failed commit (these kinds never
    quarantine the source: the disk, not the file, is at fault)."""
    assert err.kind not in QUARANTINE_KINDS, err.kind
    res.status, res.error, res.error_kind = "failed", err.message.replace("\n", " "), err.kind
    for name in ("archive_path", "archive_checksum", "archive_checksum_type", "archive_size"):
        setattr(res, name, None)
