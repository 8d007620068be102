"""Rank 0's recorder without a database: the thread's order (commit, then unlink), its back-pressure, its
failures raised on rank 0's thread, and a database lost for good (status 4, nothing deleted)."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from legampi.db import DatabaseError
from legampi.recorder import LOST_DATABASE, Recorder
from legampi.stream import FileResult


class FakeDb:
    """record_results checks that every source still exists when its batch commits."""

    def __init__(self, processing: Path, fail: BaseException | None = None) -> None:
        self.processing, self.fail = processing, fail
        self.committed: list[str] = []
        self.events: list[Any] = []
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.closed = 0

    def record_results(self, batch: list[FileResult], job_id: str, events: Any = ()) -> list[FileResult]:
        self.threads.add(threading.current_thread().name)
        self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.events += events  # the previous batch's source-removed events, in this batch's transaction
        for r in batch:
            assert (self.processing / r.rel).exists(), f"{r.rel}: source removed before its row committed"
        self.committed += [r.file_id for r in batch]
        return [r for r in batch if r.status == "available"]

    def add_events(self, events: list[Any], job_id: str) -> None:
        self.events += events

    def job_heartbeat(self, job_id: str) -> None:
        if self.fail is not None:
            raise self.fail

    def release(self, ids: list[str], job_id: str, reason: str) -> int:
        if self.fail is not None:
            raise self.fail
        return len(ids)

    def close(self) -> None:
        self.closed += 1


def _setup(tmp_path: Path, n: int, batch: int = 2, **kw: Any) -> tuple[Recorder, FakeDb, list[FileResult]]:
    cfg = SimpleNamespace(
        func=SimpleNamespace(batch_size=batch, flush_interval=60.0),
        workspaces=SimpleNamespace(keep_processed=False, processing=tmp_path),
    )
    db = FakeDb(tmp_path, kw.pop("fail", None))
    results = []
    for i in range(n):
        (tmp_path / f"f{i}.c4gh").write_bytes(b"x")
        results.append(FileResult(f"F{i}", f"f{i}.c4gh", "available", archive_path=f"/a/f{i}.c4gh", bytes_read=1))
    rec = Recorder(db, cfg, "job-1", reconnect=lambda: db, backoff=0.0, **kw)  # type: ignore[arg-type]
    return rec, db, results


@pytest.mark.parametrize("threaded", [True, False])
def test_sources_removed_only_after_their_rows_commit(tmp_path: Path, threaded: bool) -> None:
    rec, db, results = _setup(tmp_path, 5, threaded=threaded)
    for r in results:
        rec.add(r)
    rec.close()
    assert db.committed == [r.file_id for r in results]
    assert not list(tmp_path.glob("*.c4gh")), "recorded sources not removed"
    assert [e.file_id for e in db.events] == db.committed
    assert (rec.summary.files, rec.summary.available, rec.done) == (5, 5, {r.file_id for r in results})
    assert db.threads == {"legampi-recorder" if threaded else threading.current_thread().name}
    assert rec.lost is None and not rec.should_stop()


def test_a_failure_on_the_thread_is_raised_on_rank_0(tmp_path: Path) -> None:
    rec, _db, results = _setup(tmp_path, 2, fail=RuntimeError("disk on fire"), threaded=True)
    rec.add(results[0])
    rec.add(results[1])  # a full batch: the thread writes it and fails
    with pytest.raises(RuntimeError, match="disk on fire"):
        rec.flush()
    assert all((tmp_path / r.rel).exists() for r in results)


def test_the_queue_is_bounded_and_holds_the_loop_back(tmp_path: Path) -> None:
    rec, db, results = _setup(tmp_path, 300, batch=1, threaded=True)
    db.gate.clear()  # the database is slow: the first commit waits
    adder = threading.Thread(target=lambda: [rec.add(r) for r in results])
    adder.start()
    deadline = time.monotonic() + 30
    while not rec._queue.full():  # the bound is what is tested
        assert time.monotonic() < deadline, "the queue never filled"
        time.sleep(0.01)
    assert adder.is_alive(), "the loop went on although the recorder's queue was full"
    assert rec._queue.qsize() <= rec._queue.maxsize < len(results)
    db.gate.set()
    adder.join(30)
    assert not adder.is_alive()
    rec.close()
    assert db.committed == [r.file_id for r in results]


@pytest.mark.parametrize("threaded", [True, False])
def test_a_database_lost_for_good_stops_the_job_and_deletes_nothing(tmp_path: Path, threaded: bool, capsys) -> None:
    gone = DatabaseError("PostgreSQL postgresql://u@db:5432/x: server closed the connection unexpectedly")
    rec, db, results = _setup(tmp_path, 5, fail=gone, retries=2, threaded=threaded)
    results[4] = FileResult("F4", "f4.c4gh", "failed", error="bad md5", error_kind="checksum")
    for r in results[:2]:
        rec.add(r)  # one batch: retried, then lost
    rec.flush()
    assert rec.lost is not None and "server closed the connection" in rec.lost
    assert rec.should_stop(), "a lost database must stop the hand-outs"
    for r in results[2:]:  # what the workers still held
        rec.add(r)
    rec.close()
    assert db.closed == 2, "every retry reconnects"
    assert all((tmp_path / f"f{i}.c4gh").exists() for i in range(5)), "a source was deleted"
    assert rec.unrecorded == 4  # the failed file is not an archived one
    out = io.StringIO()
    assert rec.end_lost(out) == LOST_DATABASE == 4
    err = capsys.readouterr().err
    assert (
        "legampi process: lost the tracking database: PostgreSQL postgresql://u@db:5432/x: server closed the "
        "connection unexpectedly; 4 archived file(s) not recorded, nothing deleted; rerun `legampi process` "
        "once the database is back"
    ) in err
    assert "STOPPED: lost the tracking database" in out.getvalue()


@pytest.mark.parametrize("threaded", [True, False])
def test_call_runs_where_the_connection_is_owned_and_returns_or_raises(tmp_path: Path, threaded: bool) -> None:
    """`process` claims its next files through `Recorder.call`: once the recorder thread runs, the call
    runs on it (one connection, one thread at a time); its DatabaseError reaches the caller, and the
    recorder carries on."""
    rec, db, results = _setup(tmp_path, 3, threaded=threaded)
    assert rec.call(lambda d: (d is db, threading.current_thread().name)) == (True, "MainThread")
    rec.add(results[0])  # starts the thread (threaded)
    where = rec.call(lambda d: threading.current_thread().name)
    assert where == ("legampi-recorder" if threaded else "MainThread")

    def broken(d: Any) -> None:
        raise DatabaseError("claim refused")

    with pytest.raises(DatabaseError, match="claim refused"):
        rec.call(broken)
    for r in results[1:]:
        rec.add(r)
    rec.close()
    assert db.committed == [r.file_id for r in results]
