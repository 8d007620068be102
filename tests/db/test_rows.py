"""The typed rows of legampi.db on both backends: they carry exactly the table's columns and the same
values as the dict rows, and a fresh schema is created once even when two init-db runs race."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

from legampi.db import (
    DATASET_COLUMNS,
    FILE_COLUMNS,
    JOB_COLUMNS,
    SCHEMA_VERSION,
    Database,
    DatasetRow,
    FileRow,
    JobRow,
)
from tests.conftest import Workspace

MD5 = "a" * 32


def test_row_classes_have_exactly_the_tables_columns(workspace: Workspace, dbh: SimpleNamespace) -> None:
    db = dbh.connect(workspace.db_url)
    try:
        for table, columns in (("file", FILE_COLUMNS), ("dataset_log", DATASET_COLUMNS), ("job", JOB_COLUMNS)):
            got = tuple(d[0] for d in db.execute(f"SELECT * FROM {table} WHERE 1 = 0").description)
            assert got == columns, table
    finally:
        db.close()


def test_typed_rows_carry_the_dict_rows_values(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    man = ws.metadata / "EGAD1.tab"
    man.write_text(f"one.c4gh\t{MD5}\t10\ntwo.c4gh\t{'b' * 32}\t20\n", encoding="utf-8")
    dbh.ok(ws, "register", str(man))
    db: Database = dbh.connect(ws.db_url)
    try:
        rows = db.file_rows()
        assert all(isinstance(r, FileRow) for r in rows)
        assert [dataclasses.asdict(r) for r in rows] == db.files()
        assert [r.file_name for r in db.file_rows(names=["two.c4gh"])] == ["two.c4gh"]
        one = db.file_row("one.c4gh")
        assert one is not None and (one.md5, one.size, one.status, one.attempts) == (MD5, 10, "pending", 0)
        assert db.file_row("no-such-file") is None
        [ds] = db.dataset_rows()
        assert isinstance(ds, DatasetRow) and (ds.dataset_id, ds.n_files, ds.n_bytes) == ("EGAD1", 2, 30)
        assert dataclasses.asdict(ds) == db.datasets()[0]
        db.job_start("j1", "process", "h", 3)
        [job] = db.job_rows()
        assert isinstance(job, JobRow) and (job.job_id, job.ranks, job.state, job.ended_at) == (
            "j1",
            3,
            "running",
            None,
        )
        assert {k: v for k, v in dataclasses.asdict(job).items() if k != "state"} == db.jobs()[0]
    finally:
        db.close()


def test_set_status_returns_the_row_as_it_was(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    man = ws.metadata / "EGAD1.tab"
    man.write_text(f"one.c4gh\t{MD5}\t10\n", encoding="utf-8")
    dbh.ok(ws, "register", str(man))
    db: Database = dbh.connect(ws.db_url)
    try:
        before = db.files()[0]
        assert db.set_status("one.c4gh", "failed", "status-set", error="bad") == before
        after = db.file_row("one.c4gh")
        assert after is not None and (after.status, after.error) == ("failed", "bad")
    finally:
        db.close()


def test_racing_init_db_runs_create_the_schema_once(bare_workspace: Workspace, dbh: SimpleNamespace) -> None:
    """Both runs see no schema; the second waits for the first's lock, then finds version 2 and does nothing."""
    url = bare_workspace.db_url
    start = threading.Barrier(2)

    def init() -> tuple[int | None, int]:
        db = dbh.connect(url)
        try:
            start.wait(timeout=30)
            return db.init_schema()
        finally:
            db.close()

    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(init) for _ in range(2)]
        results = [r.result(timeout=120) for r in runs]  # re-raises a run's error
    assert [after for _before, after in results] == [SCHEMA_VERSION, SCHEMA_VERSION]
    db = dbh.connect(url)
    try:
        assert [r["version"] for r in db.query("SELECT version FROM schema_version")] == [SCHEMA_VERSION]
    finally:
        db.close()


def test_fresh_init_runs_every_migration(tmp_path: Path, dbh: SimpleNamespace) -> None:
    """A fresh database is built by the same steps an upgrade runs: 001, 002, ... (columns at the end)."""
    db = dbh.connect(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        assert db.init_schema() == (None, SCHEMA_VERSION)
        cols = [d[0] for d in db.execute("SELECT * FROM file WHERE 1 = 0").description]
        assert cols[-4:] == ["archive_name", "transfer_checksum", "transfer_checksum_type", "file_number"]
        assert db.schema_version() == SCHEMA_VERSION
    finally:
        db.close()
