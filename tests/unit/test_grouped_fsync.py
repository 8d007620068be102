"""Issue 15: one folder fsync makes a file's sidecar and archive link durable, in that order.

Relies on the file system journalling the folder's operations in order (archive.ORDERED_DIR_FS); the
tests check the order of the calls, and that a worker dying inside that fsync returns no result (so
rank 0 records nothing and keeps the source) and leaves only what the next attempt can take over.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from legampi import archive
from legampi.stream import process_file


def make_input(src: Path, ws, h) -> str:
    rel = "a/b/small.dat.c4gh"
    h.c4gh_encrypt(src, ws.keys.inbox.pub, ws.source(rel))
    return rel


class Killed(BaseException):
    """The worker dies here (not an Exception: nothing in the pipeline may catch it)."""


def _ordered(ws) -> None:
    if not archive.orders_dir_ops(ws.end_storage):
        pytest.skip(f"{ws.end_storage} is on {archive.fs_type(ws.end_storage) or 'an unknown file system'}")


def _trace(monkeypatch, calls: list[tuple[str, str]], die_at_dir_fsync: bool = False) -> None:
    real_link, real_fsync_dir = os.link, archive.fsync_dir

    def link(src, dst, *a, **kw):
        calls.append(("link", Path(dst).name))
        return real_link(src, dst, *a, **kw)

    def fsync_dir(path):
        calls.append(("fsync_dir", Path(path).name))
        if die_at_dir_fsync:
            raise Killed()
        return real_fsync_dir(path)

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(archive, "fsync_dir", fsync_dir)


def test_one_folder_fsync_after_sidecar_then_archive_link(ws, plaintexts, h, monkeypatch) -> None:
    _ordered(ws)
    src, data = plaintexts.make(1024)
    rel = make_input(src, ws, h)
    calls: list[tuple[str, str]] = []
    _trace(monkeypatch, calls)
    result = process_file(h.task_for(rel, data), ws.ctx())
    assert result.status == "available", result.error
    final = Path(result.archive_path).name
    assert calls == [("link", final + ".sha256"), ("link", final), ("fsync_dir", "b")]


def test_worker_killed_in_the_folder_fsync_records_nothing_and_retry_succeeds(ws, plaintexts, h, monkeypatch) -> None:
    _ordered(ws)
    src, data = plaintexts.make(1024)
    rel = make_input(src, ws, h)
    calls: list[tuple[str, str]] = []
    _trace(monkeypatch, calls, die_at_dir_fsync=True)
    with pytest.raises(Killed):  # no FileResult: the worker sends rank 0 nothing to record
        process_file(h.task_for(rel, data), ws.ctx())
    assert ws.source(rel).exists()
    monkeypatch.undo()
    finals = [p for p in ws.end_files() if not p.name.endswith(".sha256")]
    assert len(finals) == 1 and (final := finals[0]).with_name(final.name + ".sha256").exists()
    # The crash may persist the sidecar alone (never the archive link alone, by the folder's ordering):
    final.unlink()
    result = process_file(h.task_for(rel, data), ws.ctx())
    assert result.status == "available", result.error  # its own orphan sidecar is replaced
