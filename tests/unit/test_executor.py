"""The executor face without MPI: each MPI command's coordinator-side function run with an in-process
executor (`parallel.InProcess`), and `parallel.execute` with no team. No mpiexec, no mpi4py import."""

from __future__ import annotations

import dataclasses
import io
import itertools
import logging
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from legampi import config, export, ingest, manifest, parallel, registration, rekey, rekey_job, verify
from legampi.db import Database
from legampi.keys import fingerprint, load_public_key
from legampi.parallel import InProcess, Job, NotReady, execute
from legampi.stream import FileResult
from tests.conftest import make_keypair, make_workspace


@pytest.fixture
def ws(tmp_path: Path) -> Any:
    """A workspace on SQLite with four registered files in processing, and its open database."""
    w = make_workspace(tmp_path, f"sqlite:///{tmp_path / 'tracking.db'}")
    entries = [w.add_file(f"DS1/f{i}.bam.c4gh", size) for i, size in enumerate([10, 70_000, 3, 200_000])]
    cfg = config.load(w.config)
    db = Database.connect(cfg.database)
    db.init_schema(cfg.func.extensions)
    ds, rows = manifest.load(w.manifest("DS1", entries), "DS1")
    db.register(ds, registration.prepare(rows, cfg, "DS1.tab"), "DS1.tab")
    yield SimpleNamespace(w=w, cfg=cfg, db=db, entries=entries)
    db.close()


@pytest.fixture(autouse=True)
def job_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several jobs in one process within a second: ids the host-pid-time form would repeat."""
    n = itertools.count()
    monkeypatch.setattr(ingest, "make_job_id", lambda: f"test-{next(n)}")
    monkeypatch.setattr(rekey_job, "make_job_id", lambda: f"test-rekey-{next(n)}")


def statuses(db: Database) -> dict[str, str]:
    return {r["file_name"]: r["status"] for r in db.files()}


def archive_all(ws: Any) -> None:
    out = io.StringIO()
    code = ingest.process_files(
        ws.db, InProcess(ingest.load_pipeline(ws.cfg, 0)), ws.cfg, ingest.ProcessOptions(), None, out
    )
    assert code == 0, out.getvalue()


# ---------------------------------------------------------------------- the executor itself
def test_in_process_runs_largest_first_or_in_name_order_and_awaits_futures() -> None:
    def work(t: tuple[str, int]) -> Any:
        if t[1] % 2:
            f: Future[str] = Future()
            f.set_result(t[0])
            return f
        return t[0]

    tasks = [("b", 1), ("a", 5), ("c", 3), ("d", 2)]
    got: list[str] = []
    InProcess(work).run(tasks, got.append, key=lambda t: t[1], name=lambda t: t[0])
    assert got == ["a", "c", "d", "b"]
    got.clear()
    InProcess(work).run(tasks, got.append, schedule="static", key=lambda t: t[1], name=lambda t: t[0])
    assert got == ["a", "b", "c", "d"]


def test_in_process_stops_starting_tasks_when_asked() -> None:
    got: list[int] = []
    InProcess(lambda t: t).run([1, 2, 3], got.append, should_stop=lambda: len(got) >= 2, key=lambda t: -t)
    assert got == [1, 2]


def test_execute_without_a_team_refuses_on_any_problem(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    def broken_open() -> None:
        raise NotReady("no database")

    def broken_load(_rank: int) -> Any:
        raise NotReady("no keys")

    job: Job[None] = Job(open=broken_open, load=broken_load, coordinate=lambda _s, _ex: ran.append("x") or 0)
    with caplog.at_level(logging.ERROR, logger="legampi.parallel"):
        assert execute(job) == 2
    assert ran == []
    assert "not starting: no database; no keys" in caplog.text


def test_execute_without_a_team_gives_rank_0_everything_and_returns_its_status() -> None:
    seen: dict[str, Any] = {}

    def coordinate(state: str, ex: parallel.Executor) -> int:
        ex.run([3, 1, 2], lambda r: seen.setdefault("results", []).append(r))
        seen["state"], seen["ranks"] = state, ex.ranks
        return 1

    job: Job[str] = Job(open=lambda: "db", load=lambda rank: lambda t: (rank, t), coordinate=coordinate)
    assert execute(job) == 1
    assert seen == {"state": "db", "ranks": 1, "results": [(0, 1), (0, 2), (0, 3)]}  # no sizes: name order


def test_an_exception_on_one_rank_reaches_the_caller() -> None:
    def coordinate(_s: None, _ex: parallel.Executor) -> int:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        execute(Job(open=lambda: None, load=lambda _r: lambda t: t, coordinate=coordinate))


# ---------------------------------------------------------------------- process
def test_process_files_archives_and_records_every_file(ws: Any) -> None:
    out = io.StringIO()
    work = ingest.load_pipeline(ws.cfg, 0)
    assert ingest.process_files(ws.db, InProcess(work), ws.cfg, ingest.ProcessOptions(), None, out) == 0
    assert "4 file(s), 4 available, 0 failed" in out.getvalue()
    assert set(statuses(ws.db).values()) == {"available"}
    assert not any(ws.w.processing.rglob("*.c4gh")), "sources removed once recorded"


def test_a_config_failure_stops_process_and_gives_files_back(ws: Any) -> None:
    """Failure kind `config` (e.g. a wrong passphrase seen at run time): the file is released, nothing
    new starts, the job ends 2 and the files not started go back for the next run."""

    def work(task: Any) -> FileResult:
        return FileResult(task.file_id, task.rel, "failed", error="wrong passphrase", error_kind="config")

    out = io.StringIO()
    assert ingest.process_files(ws.db, InProcess(work), ws.cfg, ingest.ProcessOptions(), None, out) == 2
    assert "STOPPED: configuration problem: wrong passphrase" in out.getvalue()
    # claimed files go back `received`; those never claimed (claims come in batches) stay `pending`
    assert "received" in set(statuses(ws.db).values()) <= {"received", "pending"}
    assert len(list(ws.w.processing.rglob("*.c4gh"))) == 4


def test_process_refuses_when_the_configuration_lacks_a_key(ws: Any, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = dataclasses.replace(ws.cfg, crypto=dataclasses.replace(ws.cfg.crypto, inbox_secret_key=None))
    touched: list[Any] = []
    before = statuses(ws.db)
    assert ingest.process_files(ws.db, InProcess(touched.append), cfg, ingest.ProcessOptions(), None) == 2
    assert touched == [] and "not starting" in capsys.readouterr().err
    assert statuses(ws.db) == before and ws.db.jobs() == [], "nothing claimed, no job started"


def test_a_signal_stops_process_and_releases_what_was_not_started(ws: Any) -> None:
    work = ingest.load_pipeline(ws.cfg, 0)
    done: list[Any] = []

    def one_then_stop(task: Any) -> Any:
        done.append(task)
        return work(task)

    opts = ingest.ProcessOptions(should_stop=lambda: bool(done))
    out = io.StringIO()
    assert ingest.process_files(ws.db, InProcess(one_then_stop), ws.cfg, opts, None, out) == 0
    assert "(stopped early by signal)" in out.getvalue() and "claimed file(s) not started" in out.getvalue()
    # the claimed but not started go back `received`; the rest (claims come in batches) were never claimed
    left = sorted(statuses(ws.db).values())
    assert left[0] == "available" and "received" in left[1:] and set(left[1:]) <= {"received", "pending"}


def test_run_process_without_a_team_is_the_one_rank_job(ws: Any) -> None:
    out = io.StringIO()
    assert ingest.run_process(ws.cfg, None, lambda: ws.db, out=out, schedule="static") == 0
    assert set(statuses(ws.db).values()) == {"available"}


# ---------------------------------------------------------------------- verify-archive
def test_verify_archive_finds_an_altered_file(ws: Any) -> None:
    archive_all(ws)
    work = verify.load_auditor(ws.cfg, decrypt=True)
    out = io.StringIO()
    assert verify.verify_archive(ws.db, InProcess(work), ws.cfg, None, True, out) == 0
    assert "4 archived file(s) checked with decryption: 4 ok" in out.getvalue()
    victim = ws.w.end_storage / ws.entries[1]["name"]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    out = io.StringIO()
    assert verify.verify_archive(ws.db, InProcess(work), ws.cfg, None, True, out) == 1
    assert "1 mismatch" in out.getvalue() and str(victim) in out.getvalue()


# ---------------------------------------------------------------------- rekey
def test_rotate_archive_moves_every_file_to_the_new_key(ws: Any) -> None:
    archive_all(ws)
    sk, pk = make_keypair(ws.w.root / "keys", "archive2")
    keys = rekey.load_rekey_keys(ws.cfg, pk, sk)
    out = io.StringIO()
    work = rekey_job.load_rotator(keys)
    assert rekey_job.rotate_archive(ws.db, InProcess(work), ws.cfg, keys, out=out) == 0
    assert "4 rekeyed" in out.getvalue()
    assert {r["archive_key"] for r in ws.db.files()} == {fingerprint(load_public_key(pk))}


# ---------------------------------------------------------------------- export
def test_export_dataset_writes_files_manifest_and_list(ws: Any, tmp_path: Path) -> None:
    archive_all(ws)
    _sk, pk = make_keypair(ws.w.root / "keys", "researcher")
    rfp = fingerprint(load_public_key(pk))
    work = export.load_exporter(ws.cfg, pk, verify=True)
    out = io.StringIO()
    dest = tmp_path / "export"
    assert export.export_dataset(ws.db, InProcess(work), ws.cfg, "DS1", rfp, dest, verify=True, out=out) == 0
    assert f"exported dataset DS1: 4 file(s) for recipient key {rfp}" in out.getvalue()
    lines = (dest / "DS1.sha256").read_text().splitlines()
    assert [line.split()[-1] for line in lines] == sorted(e["name"] for e in ws.entries)
    assert all((dest / e["name"]).is_file() for e in ws.entries)
