"""Issue 15: one folder fsync makes a file's sidecar and archive link durable, in that order; small files
are made durable in groups (grouping.GroupedWork, groupsync.Group) with the same promises per file.

Relies on the file system journalling the folder's operations in order (archive.ORDERED_DIR_FS); the
tests check the order of the calls, and that a worker dying inside that fsync returns no result (so
rank 0 records nothing and keeps the source) and leaves only what the next attempt can take over.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from pathlib import Path

import pytest

from legampi import archive, checksum, grouping, provenance
from legampi.grouping import GroupedWork
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


# ------------------------------------------------------------------ a group of small files (grouping.GroupedWork)


def _group_inputs(ws, plaintexts, h, n: int, folder: str = "g") -> list:
    """N small Crypt4GH sources; their tasks (with sizes, so they join a group) and plaintexts."""
    out = []
    for i in range(n):
        src, data = plaintexts.make(1000 + i)
        rel = f"{folder}/f{i}.dat.c4gh"
        h.c4gh_encrypt(src, ws.keys.inbox.pub, ws.source(rel))
        task = dataclasses.replace(h.task_for(rel, data), size=ws.source(rel).stat().st_size)
        out.append((task, data))
    return out


def _trace_group(monkeypatch, calls: list[tuple[str, str]], die_at: tuple[str, int] | None = None) -> None:
    """Record fsyncs (file or folder), links and the writeback hint in order; die at the Nth call of a kind."""
    real_fsync, real_link = os.fsync, os.link
    seen: dict[str, int] = {}

    def note(kind: str, name: str) -> None:
        calls.append((kind, name))
        seen[kind] = seen.get(kind, 0) + 1
        if die_at is not None and die_at == (kind, seen[kind]):
            raise Killed()

    def fsync(fd):
        st = os.fstat(fd)
        note("fsync_dir" if stat.S_ISDIR(st.st_mode) else "fsync", os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[1])
        return real_fsync(fd)

    def link(src, dst, *a, **kw):
        note("link", Path(dst).name)
        return real_link(src, dst, *a, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)


def test_group_fsyncs_in_a_row_then_links_then_one_folder_fsync(ws, plaintexts, h, monkeypatch) -> None:
    _ordered(ws)
    inputs = _group_inputs(ws, plaintexts, h, 4)
    calls: list[tuple[str, str]] = []
    _trace_group(monkeypatch, calls)
    work = GroupedWork(ws.ctx(), group_files=64)
    futures = [work(task) for task, _ in inputs]
    assert calls == [] and not any(f.done() for f in futures)  # streamed and checked; nothing durable, no result
    work.flush()
    results = [f.result(timeout=60) for f in futures]
    assert [r.status for r in results] == ["available"] * 4, [r.error for r in results]
    finals = [Path(r.archive_path).name for r in results]
    kinds = [k for k, _ in calls]
    assert kinds == ["fsync"] * 8 + ["link"] * 8 + ["fsync_dir"]  # data + sidecars in a row; ONE folder fsync
    assert calls[-1] == ("fsync_dir", "g")
    links = [n for k, n in calls if k == "link"]
    for name in finals:  # each sidecar is linked before its archive file
        assert links.index(name + ".sha256") < links.index(name)
    for r, (_task, data) in zip(results, inputs, strict=True):
        final = Path(r.archive_path)
        assert h.c4gh_decrypt(final, ws.keys.archive.sec) == data
        assert checksum.read_sidecar(final.with_name(final.name + ".sha256"))[2]["file_id"] == r.file_id
    assert not [p for p in ws.end_files() if archive.is_temp_name(p.name)]


def test_group_where_folders_are_not_ordered_fsyncs_sidecars_first(ws, plaintexts, h, monkeypatch) -> None:
    inputs = _group_inputs(ws, plaintexts, h, 2)
    monkeypatch.setattr(archive, "ORDERED_DIR_FS", frozenset())
    calls: list[tuple[str, str]] = []
    _trace_group(monkeypatch, calls)
    work = GroupedWork(ws.ctx(), group_files=2)  # full after two: synced without a flush
    results = [f.result(timeout=60) for f in [work(task) for task, _ in inputs]]
    assert [r.status for r in results] == ["available"] * 2
    kinds = [k for k, _ in calls]
    assert kinds == ["fsync"] * 4 + ["link", "link", "fsync_dir", "link", "link", "fsync_dir"]
    assert [n for k, n in calls if k == "link"][:2] == [Path(r.archive_path).name + ".sha256" for r in results]


def test_one_bad_file_in_a_group_fails_alone(ws, plaintexts, h, monkeypatch) -> None:
    inputs = _group_inputs(ws, plaintexts, h, 4)
    real_fsync = os.fsync

    def fsync(fd):  # the disk fails the second file's data
        if ".f1.dat.c4gh" + archive.TEMP_MARKER in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    foreign = archive.final_path(ws.end_storage, inputs[2][0].rel, (".c4gh",))
    foreign.parent.mkdir(parents=True, exist_ok=True)
    foreign.with_name(foreign.name + ".sha256").write_text("0" * 64 + "  other\n")  # not ours: a conflict
    monkeypatch.setattr(os, "fsync", fsync)
    work = GroupedWork(ws.ctx(), group_files=64)
    futures = [work(task) for task, _ in inputs]
    work.flush()
    results = [f.result(timeout=60) for f in futures]
    assert [r.status for r in results] == ["available", "failed", "failed", "available"], [r.error for r in results]
    assert results[1].error_kind == "io" and "flushing the archive temp file" in results[1].error
    assert results[2].error_kind == "archive_conflict"
    assert all(r.archive_path is None for r in results[1:3])
    names = {p.name for p in ws.end_files()}
    assert names == {"f0.dat.c4gh", "f0.dat.c4gh.sha256", "f3.dat.c4gh", "f3.dat.c4gh.sha256", "f2.dat.c4gh.sha256"}
    assert all(ws.source(t.rel).exists() for t, _ in inputs)  # rank 0 removes sources, and only of what it records


@pytest.mark.parametrize("die_at", [("fsync", 3), ("fsync", 7), ("link", 1), ("link", 4), ("fsync_dir", 1)])
def test_worker_killed_in_a_group_sync_records_nothing_and_a_rerun_finishes_each_file_once(
    ws, plaintexts, h, monkeypatch, die_at
) -> None:
    """SIGKILL stand-in (an exception nothing catches) at a point of the group's sync: no result exists
    (rank 0 records nothing and removes no source); every archive file that reached its name carries its
    provenance (recovery adopts it); a rerun of the others archives each file exactly once."""
    _ordered(ws)
    inputs = _group_inputs(ws, plaintexts, h, 4)
    calls: list[tuple[str, str]] = []
    _trace_group(monkeypatch, calls, die_at=die_at)
    work = GroupedWork(ws.ctx(), group_files=64)
    futures = [work(task) for task, _ in inputs]
    group = work.group
    work.group = type(group)()  # the group's sync, in this thread: the exception is the worker's death
    with pytest.raises(Killed):
        group.sync()
    monkeypatch.undo()
    assert not any(f.done() for f in futures)  # nothing for rank 0 to record
    assert all(ws.source(t.rel).exists() for t, _ in inputs)
    adopted, rerun = [], []
    for task, _data in inputs:
        final = archive.final_path(ws.end_storage, task.rel, (".c4gh",))
        if final.exists():  # recovery's test: the provenance proves the copy
            row = {"file_id": task.file_id, "file_name": task.rel, "md5": task.md5, "sha256": task.sha256}
            verdict = provenance.examine(final, row)
            assert verdict.adopt, verdict.reason
            adopted.append(task)
        else:
            rerun.append(task)
    for p in ws.end_files():  # recovery removes the dead worker's temp files
        if archive.is_temp_name(p.name):
            p.unlink()
    results = [process_file(t, ws.ctx()) for t in rerun]
    assert all(r.status == "available" for r in results), [r.error for r in results]
    finals = sorted(p.name for p in ws.end_files() if p.name.endswith(".c4gh"))
    assert finals == [f"f{i}.dat.c4gh" for i in range(4)]  # each file exactly once
    assert len(adopted) + len(rerun) == 4
    for task, data in inputs:
        final = archive.final_path(ws.end_storage, task.rel, (".c4gh",))
        assert h.c4gh_decrypt(final, ws.keys.archive.sec) == data


def test_big_files_keep_the_overlapped_path_and_results_stay_in_order(ws, plaintexts, h) -> None:
    inputs = _group_inputs(ws, plaintexts, h, 3)
    big_task = dataclasses.replace(inputs[1][0], size=grouping.GROUP_FILE_BYTES + 1)  # as if it were big
    work = GroupedWork(ws.ctx(), group_files=64)
    first = work(inputs[0][0])
    second = work(big_task)  # flushes the group first: the small file's result does not wait behind it
    third = work(inputs[2][0])
    assert first.result(timeout=60).status == "available" and second.result(timeout=60).status == "available"
    assert not third.done()
    work.flush()
    assert third.result(timeout=60).status == "available"


def test_group_files_0_commits_each_file_on_its_own(ws, plaintexts, h, monkeypatch) -> None:
    _ordered(ws)
    inputs = _group_inputs(ws, plaintexts, h, 2)
    calls: list[tuple[str, str]] = []
    _trace_group(monkeypatch, calls)
    work = GroupedWork(ws.ctx(), group_files=0)
    first = work(inputs[0][0])
    assert first.result(timeout=60).status == "available"  # no flush needed: the overlapped path
    assert work(inputs[1][0]).result(timeout=60).status == "available"
    assert [k for k, _ in calls].count("fsync_dir") == 2  # one folder fsync per file
