"""Small archive files made durable together (issue 15): a few fsyncs per group instead of three per file.

`provenance.commit` makes one file final with three waits for the disk: its data, its sidecar's data,
its folder. For a 1 KiB file those waits are nearly all of its time. A `Group` collects finished temp
files (their data written, not yet fsynced) and then, in this order:

  1. fsyncs every data temp file in a row, 2. writes every sidecar (with provenance) to a temp name,
  3. fsyncs those in a row, 4. links every sidecar, 5. on a file system that does not order a folder's
  operations (archive.ORDERED_DIR_FS), fsyncs the folders, 6. links every archive file, 7. fsyncs each
  folder once.

The promises of the one-file path hold for each file of the group: no data reaches a final name before
it is fsynced, no archive file is durable without its sidecar (the sidecar's link is made before the
archive file's, in a folder that keeps that order or after the folder's fsync), and a file failing a
step fails alone (its temp files and sidecar removed) while the others go on. The worker sends no result
before `sync` returned, so a crash anywhere in a group leaves nothing recorded: what reached its final
name carries its provenance, and recovery adopts it.

Writers find the group through a context variable (`collecting`), set by the worker around the end of
each small file's pipeline; other threads (a big file's overlapped finish) never see it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legampi import archive, checksum, provenance
from legampi.formats import IngestError

_COLLECTING: ContextVar[Group | None] = ContextVar("legampi_group", default=None)


def collecting() -> Group | None:
    """The group the current file's commit joins, or None (commit it on its own)."""
    return _COLLECTING.get()


@dataclass
class _Entry:
    owner: Any  # what the caller gets back with the outcome (the FileResult)
    tmp: archive.TempArchiveFile
    digest: str
    algo: str
    mode: int
    prov: dict[str, Any]
    rel: str
    side: Path | None = None
    side_tmp: Path | None = None
    side_fd: int | None = None
    side_linked: bool = False
    error: IngestError | None = None


class Group:
    """Finished temp archive files waiting to be made durable and final together (`sync`)."""

    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        self._owner: Any = None

    def __len__(self) -> int:
        return len(self.entries)

    @contextlib.contextmanager
    def collect(self, owner: Any) -> Iterator[None]:
        """Within this block, a posix writer's commit joins the group on behalf of OWNER."""
        token = _COLLECTING.set(self)
        self._owner = owner
        try:
            yield
        finally:
            _COLLECTING.reset(token)
            self._owner = None

    def add(
        self, tmp: archive.TempArchiveFile, digest: str, algo: str, mode: int, prov: dict[str, Any], rel: str
    ) -> None:
        """A finished (`finish(sync=False)`) temp file to commit with the group, as provenance.commit would."""
        self.entries.append(_Entry(self._owner, tmp, digest, algo, mode, prov, rel))

    def sync(self) -> list[tuple[Any, IngestError | None]]:
        """Make every file durable and final; (owner, None) for each file committed, (owner, error) for
        each that failed (nothing of it left visible but a linked archive file with its sidecar)."""
        self._each(_stage_sidecar, "writing the checksum sidecar")
        self._each(_start_data, "flushing the archive temp file")
        self._each(_sync_data, "flushing the archive temp file")
        self._each(_sync_sidecar, "flushing the checksum sidecar")
        self._each(_link_sidecar, "linking the checksum sidecar")
        folders = sorted({e.tmp.final.parent for e in self.entries})
        unordered = [d for d in folders if not archive.orders_dir_ops(d)]
        self._sync_folders(unordered, lambda e: e.side_linked)
        self._each(_link_archive, "moving the archived file into place")
        self._sync_folders(folders, lambda e: True)
        return [(e.owner, e.error) for e in self.entries]

    def _each(self, step: Callable[[_Entry], None], stage: str) -> None:
        for e in self.entries:
            if e.error is None:
                try:
                    step(e)
                except IngestError as exc:
                    self._fail(e, exc)
                except OSError as exc:
                    self._fail(e, provenance.os_error(e.rel, f"{stage} in {e.tmp.final.parent}", exc))

    def _sync_folders(self, folders: list[Path], affected: Callable[[_Entry], bool]) -> None:
        for d in folders:
            try:
                archive.fsync_dir(d)
            except OSError as exc:  # the names in D may or may not be durable: none of its files is recorded
                for e in self.entries:
                    if e.error is None and e.tmp.final.parent == d and affected(e):
                        self._fail(e, provenance.os_error(e.rel, f"making the folder {d} durable", exc))

    def _fail(self, e: _Entry, exc: IngestError) -> None:
        """E fails alone: its temp files go; its sidecar too unless its archive file is linked (a linked
        archive file keeps its provenance: recovery adopts or reports it)."""
        e.error = exc
        if e.side_fd is not None:
            fd, e.side_fd = e.side_fd, None
            os.close(fd)
        if e.side_tmp is not None:
            e.side_tmp.unlink(missing_ok=True)
        if e.side_linked and not e.tmp.committed and e.side is not None:
            e.side.unlink(missing_ok=True)  # made durable by the group's last folder fsync
        if not e.tmp.committed:
            e.tmp.abort()


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing FD's dirty pages now, without waiting (Linux: fadvise DONTNEED
    starts writeback; the pages are dropped once clean). The fsync that follows waits for them; with a
    group's files all started first, one journal commit covers their data instead of one per file."""
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _start_data(e: _Entry) -> None:
    e.tmp.start_writeback()


def _sync_data(e: _Entry) -> None:
    e.tmp.sync()


def _stage_sidecar(e: _Entry) -> None:
    e.side = provenance.clear_sidecar_path(e.tmp.final, e.algo, e.prov, e.rel)
    data = checksum.format_sidecar(e.digest, e.tmp.final.name, e.algo, e.prov)
    e.side_tmp = e.side.with_name(archive.temp_name(e.side.name))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    e.side_fd = os.open(e.side_tmp, flags, e.mode)
    os.fchmod(e.side_fd, e.mode)
    view = memoryview(data)
    while view:
        view = view[os.write(e.side_fd, view) :]
    start_writeback(e.side_fd)


def _sync_sidecar(e: _Entry) -> None:
    fd, e.side_fd = e.side_fd, None
    assert fd is not None and e.side_tmp is not None
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_sidecar(e: _Entry) -> None:
    assert e.side is not None and e.side_tmp is not None
    try:  # never over an existing sidecar: a concurrent writer of the same path loses here
        os.link(e.side_tmp, e.side)
    except FileExistsError:
        raise provenance.sidecar_taken(e.rel, e.side, e.algo) from None
    e.side_linked = True
    os.unlink(e.side_tmp)
    e.side_tmp = None


def _link_archive(e: _Entry) -> None:
    e.tmp.commit(durable=False)
