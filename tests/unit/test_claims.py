"""Claims in batches (issue 14): the lazy task source of `Executor.run` and `Dispatch`, and `Claims`
over one SQLite database shared by two jobs (the database's claim is the arbiter). No MPI."""

from __future__ import annotations

import io
import itertools
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from legampi import config, ingest, manifest, registration
from legampi.claims import Claims, candidates
from legampi.db import Database, DatabaseError
from legampi.dispatch import CANCEL, STOP, TASKS, Dispatch
from legampi.parallel import InProcess
from tests.conftest import make_workspace

SIZES = [10, 70_000, 3, 200_000, 5_000, 40_000]


@pytest.fixture
def ws(tmp_path: Path) -> Any:
    """A workspace on SQLite with six registered files in processing, and its open database."""
    w = make_workspace(tmp_path, f"sqlite:///{tmp_path / 'tracking.db'}")
    entries = [w.add_file(f"DS1/f{i}.bam.c4gh", size) for i, size in enumerate(SIZES)]
    cfg = config.load(w.config)
    db = Database.connect(cfg.database)
    db.init_schema(cfg.func.extensions)
    ds, rows = manifest.load(w.manifest("DS1", entries), "DS1")
    db.register(ds, registration.prepare(rows, cfg, "DS1.tab"), "DS1.tab")
    yield SimpleNamespace(w=w, cfg=cfg, db=db)
    db.close()


class Source:
    """A lazy task source handing out BATCHES in turn, recording how many workers each call was for."""

    def __init__(self, *batches: Sequence[int]) -> None:
        self.batches, self.calls = [list(b) for b in batches], []

    def __call__(self, workers: int) -> list[int]:
        self.calls.append(workers)
        return self.batches.pop(0) if self.batches else []


# ---------------------------------------------------------------------- the executors' lazy source
def test_in_process_takes_the_next_batch_once_its_queue_is_empty() -> None:
    ran: list[int] = []
    source = Source([1, 4], [3], [2, 5])
    InProcess(lambda t: t).run([], ran.append, key=lambda t: t, more=source)
    assert ran == [4, 1, 3, 5, 2]  # each batch largest first, after the one before
    assert source.calls == [1, 1, 1, 1]  # until it gives none


def test_in_process_static_takes_every_batch_at_the_start_and_a_stop_claims_nothing_more() -> None:
    ran: list[int] = []
    InProcess(lambda t: t).run([], ran.append, schedule="static", name=lambda t: f"{t:02d}", more=Source([3, 1], [2]))
    assert ran == [1, 2, 3]  # the seed's split over every task, in name order
    source = Source([1], [2], [3])
    InProcess(lambda t: t).run([], ran.append, should_stop=lambda: len(ran) >= 4, more=source)
    assert ran[3:] == [1] and source.calls == [1]


class FakeTeam:
    """What Dispatch needs of parallel.Team: two workers, and the messages it sent."""

    size = 3

    def __init__(self) -> None:
        self.sent: list[tuple[int, int, Any]] = []

    def send(self, obj: Any, dest: int, tag: int) -> None:
        self.sent.append((dest, tag, obj))


def test_dispatch_asks_for_more_when_no_task_waits_and_a_worker_runs_low() -> None:
    team, source = FakeTeam(), Source([1, 2, 3, 4], [5, 6])
    d = Dispatch(team, [], "dynamic", lambda t: t, str, source)  # type: ignore[arg-type]
    assert source.calls == [2]  # the first batch, for both workers
    assert team.sent == [(1, TASKS, [4, 2]), (2, TASKS, [3, 1])]  # dealt round-robin, one message per worker
    d.settle(1, [4])  # a result from worker 1: nothing waits, it holds one task
    d.refill()
    d.feed(1)
    assert source.calls == [2, 2] and team.sent[-1] == (1, TASKS, [6, 5])
    for w, t in ((1, 2), (2, 3), (2, 1), (1, 6), (1, 5)):
        d.settle(w, [t])
        d.refill()
        d.finish_if_idle(w)
    assert source.calls == [2, 2, 2] and d.more is None  # empty once: never asked again
    assert [m for m in team.sent if m[1] == STOP] == [(2, STOP, None), (1, STOP, None)]


def test_a_stopping_dispatch_asks_for_nothing_more() -> None:
    team, source = FakeTeam(), Source([1, 2], [3])
    d = Dispatch(team, [], "dynamic", lambda t: t, str, source)  # type: ignore[arg-type]
    d.cancel()
    d.settle(1, [2])
    d.refill()
    assert source.calls == [2] and (1, CANCEL, None) in team.sent


# ---------------------------------------------------------------------- Claims over one database
def test_two_jobs_claiming_in_turn_share_the_files_and_never_both_take_one(ws: Any) -> None:
    listed = candidates(ws.db, ws.cfg)
    assert [t.size for t in listed.tasks] == sorted((t.size for t in listed.tasks), reverse=True)
    ws.db.job_start("job-a", "process", "h", 2)
    ws.db.job_start("job-b", "process", "h", 2)
    a = Claims(ws.db, "job-a", candidates(ws.db, ws.cfg).tasks)
    b = Claims(ws.db, "job-b", candidates(ws.db, ws.cfg).tasks)  # listed before a claimed: same candidates
    got_a = a.more(1)
    got_b = b.more(1)
    assert len(got_a) == len(got_b) == 2 and b.taken == 2  # a's batch was not b's to take
    while batch := a.more(1):
        got_a += batch
    assert not b.more(1)
    ids_a, ids_b = {t.file_id for t in got_a}, {t.file_id for t in got_b}
    assert not ids_a & ids_b and len(ids_a | ids_b) == len(SIZES)
    claims = [(e["file_id"], e["job_id"]) for e in ws.db.events(event="claimed")]
    assert sorted(claims) == sorted([(i, "job-a") for i in ids_a] + [(i, "job-b") for i in ids_b])


def test_limit_and_batch_bounds(ws: Any) -> None:
    ws.db.job_start("job-l", "process", "h", 1)
    c = Claims(ws.db, "job-l", candidates(ws.db, ws.cfg).tasks, limit=3)
    assert len(c.more(1)) == 2 and len(c.more(1)) == 1 and not c.more(1)
    c.note(1000)
    files, nbytes = c.batch(4)
    assert files >= 8 and nbytes >= 4 * 64 * 1024 * 1024  # never below every worker's minimum queue


def test_process_claims_in_batches_and_says_what_others_took(ws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job whose candidates another job claims meanwhile: those are counted, not failed or released."""
    n = itertools.count()
    monkeypatch.setattr(ingest, "make_job_id", lambda: f"test-{next(n)}")
    ws.db.job_start("other", "process", "h", 2)
    real = Claims.more

    def more_after_another_job(self: Claims, workers: int, db: Any = None) -> list[Any]:
        if self.waiting and not self.claimed:  # another job takes the next two just before our first batch
            ws.db.claim([t.file_id for t in list(self.waiting)[:2]], "other")
        return real(self, workers, db)

    monkeypatch.setattr(Claims, "more", more_after_another_job)
    out = io.StringIO()
    work = ingest.load_pipeline(ws.cfg, 0)
    assert ingest.process_files(ws.db, InProcess(work), ws.cfg, ingest.ProcessOptions(), None, out) == 0
    assert f"{len(SIZES) - 2} available, 0 failed" in out.getvalue()
    assert "2 file(s) were claimed first by other jobs" in out.getvalue()
    assert not ws.db.events(event="released")
    assert sorted(r["status"] for r in ws.db.files()) == ["available"] * (len(SIZES) - 2) + ["processing"] * 2


def test_a_database_error_while_claiming_finishes_what_was_claimed(
    ws: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A later batch's claim fails (rolled back): the job archives what it holds, claims nothing more,
    and the rest stays for the next job (nothing left `processing`)."""
    real = Claims.more

    def fail_after_first(self: Claims, workers: int, db: Any = None) -> list[Any]:
        if self.claimed:
            raise DatabaseError("server closed the connection unexpectedly")
        return real(self, workers, db)

    monkeypatch.setattr(Claims, "more", fail_after_first)
    out = io.StringIO()
    work = ingest.load_pipeline(ws.cfg, 0)
    assert ingest.process_files(ws.db, InProcess(work), ws.cfg, ingest.ProcessOptions(), None, out) == 0
    assert "2 file(s), 2 available, 0 failed" in out.getvalue()
    assert sorted(r["status"] for r in ws.db.files()) == ["available"] * 2 + ["pending"] * (len(SIZES) - 2)
    assert "cannot claim more files (database error: server closed the connection" in caplog.text
