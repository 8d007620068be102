"""`legampi init-db` upgrades a version-1 database in place: rows survive, the new columns exist, the
archive names of registered files are filled and every file gets its registration number (file_number).
The version-1 schema is the one legampi 77a6f9d shipped, kept as fixtures/schema-v1-<backend>.sql."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from legampi.db import SCHEMA_VERSION, DatabaseError, split_sql
from tests.conftest import Workspace

FIXTURES = Path(__file__).parent / "fixtures"
TS = "2026-01-02T03:04:05.000000+00:00"
FILES = [  # file_id, file_name, status, expected archive_name
    ("EGAF1", "a/one.bam.c4gh", "available", "a/one.bam.c4gh"),
    ("EGAF2", "two.bam.CIP", "failed", "two.bam.c4gh"),
    ("EGAF3", "three.gpg", "pending", "three.c4gh"),
    ("EGAF4", "four.vcf", "received", "four.vcf.c4gh"),
    ("EGAF5", "/abs/five.c4gh", "pending", None),  # an unsafe name (a v1 database could hold one)
]
# registration times (created_at), not in file id order; EGAF1 and EGAF2 tie (then file_id decides)
CREATED = {"EGAF1": "03", "EGAF2": "03", "EGAF3": "01", "EGAF4": "02", "EGAF5": "04"}
FILE_NUMBERS = {"EGAF3": 1, "EGAF4": 2, "EGAF1": 3, "EGAF2": 4, "EGAF5": 5}  # 1..N in registration order


def make_v1(url: str, dbh: SimpleNamespace) -> None:
    db = dbh.connect(url)
    try:
        with db.transaction():
            for stmt in split_sql((FIXTURES / f"schema-v1-{db.backend}.sql").read_text()):
                db.execute(stmt)
            db.execute(
                "INSERT INTO dataset_log (dataset_id, n_files, n_bytes, date_requested) VALUES (?, 5, 50, ?)",
                ("DS", TS),
            )
            for n, (fid, name, status, _arch) in enumerate(FILES):
                db.execute(
                    "INSERT INTO file (file_id, dataset_id, file_name, size, md5, status, attempts, created_at, "
                    "updated_at) VALUES (?, 'DS', ?, 10, ?, ?, ?, ?, ?)",
                    (fid, name, f"{n + 1:x}" * 32, status, n, TS.replace("01-02", f"01-{CREATED[fid]}"), TS),
                )
                db.execute("INSERT INTO filedataset (dataset_id, file_id) VALUES ('DS', ?)", (fid,))
                db.execute(
                    "INSERT INTO file_event (file_id, dataset_id, event, status, at) VALUES (?, 'DS', 'registered', "
                    "'pending', ?)",
                    (fid, TS),
                )
            for jid, ended in (("job-ended", TS), ("job-running", None)):
                db.execute(
                    "INSERT INTO job (job_id, command, host, pid, ranks, started_at, heartbeat_at, ended_at) "
                    "VALUES (?, 'process', 'h', 1, 2, ?, ?, ?)",
                    (jid, TS, TS, ended),
                )
            db.execute("INSERT INTO job_rank VALUES ('job-ended', 1, 'h', 3, 30, 1.5)")
            db.execute("INSERT INTO trackingtable VALUES ('x.c4gh', 5, 1.0, 1, ?, ?)", (TS, TS))
    finally:
        db.close()


def test_init_db_upgrades_version_1_in_place(bare_workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = bare_workspace
    make_v1(ws.db_url, dbh)
    before = dbh.dump(ws.db_url)
    assert [r[0] for r in before["schema_version"]] == [1]
    r = dbh.ok(ws, "init-db")
    assert r.stdout.strip().endswith(f"schema version 1 -> {SCHEMA_VERSION}")
    assert "file EGAF5: no archive name recorded" in r.stderr and "absolute" in r.stderr
    after = dbh.dump(ws.db_url)
    # every row survives with its values; file gained 4 columns at the end, job one
    for table in ("trackingtable", "filedataset", "dataset_log", "file_event", "job_rank"):
        assert after[table] == before[table], table
    assert [row[:-4] for row in after["file"]] == before["file"]
    assert [row[:-1] for row in after["job"]] == before["job"]
    assert [r[0] for r in after["schema_version"]] == [1, SCHEMA_VERSION]
    db = dbh.connect(ws.db_url)
    got = {r["file_id"]: r for r in db.files()}
    for fid, _name, status, arch in FILES:
        assert got[fid]["archive_name"] == arch and got[fid]["status"] == status
        assert got[fid]["transfer_checksum"] is None and got[fid]["transfer_checksum_type"] is None
    assert {fid: r["file_number"] for fid, r in got.items()} == FILE_NUMBERS
    states = {r["job_id"]: r["state"] for r in db.query("SELECT job_id, state FROM job")}
    assert states == {"job-ended": "ended", "job-running": "running"}
    # the upgraded database is a current database: commands run, new columns take values, init-db is idempotent
    dbh.ok(ws, "status")
    db.execute(
        "UPDATE file SET transfer_checksum = ?, transfer_checksum_type = 'md5' WHERE file_id = 'EGAF3'", ("c" * 32,)
    )
    upgraded = dbh.dump(ws.db_url)
    r = dbh.ok(ws, "init-db")
    assert r.stdout.strip().endswith(f"schema version {SCHEMA_VERSION} -> {SCHEMA_VERSION}")
    assert dbh.dump(ws.db_url) == upgraded
    cols = [d[0] for d in db.execute("SELECT * FROM file").description]
    assert cols[-4:] == ["archive_name", "transfer_checksum", "transfer_checksum_type", "file_number"]
    assert [d[0] for d in db.execute("SELECT * FROM job").description][-1] == "state"
    db.close()


def test_new_and_upgraded_schemas_have_the_same_columns(
    bare_workspace: Workspace, tmp_path: Path, dbh: SimpleNamespace
) -> None:
    ws = bare_workspace
    make_v1(ws.db_url, dbh)
    dbh.ok(ws, "init-db")
    upgraded = dbh.connect(ws.db_url)
    fresh_root = tmp_path / "fresh"
    fresh_root.mkdir()
    fresh = dbh.connect(f"sqlite:///{fresh_root / 'new.db'}")
    fresh.init_schema()
    for table in ("file", "job", "schema_version", "file_event", "dataset_log"):
        a = [d[0] for d in upgraded.execute(f"SELECT * FROM {table} WHERE 1 = 0").description]
        b = [d[0] for d in fresh.execute(f"SELECT * FROM {table} WHERE 1 = 0").description]
        assert a == b, table
    upgraded.close()
    fresh.close()


def test_a_failing_upgrade_leaves_version_1_untouched(bare_workspace: Workspace, dbh: SimpleNamespace) -> None:
    """The migration runs in one transaction: if any statement fails, nothing of it stays."""
    ws = bare_workspace
    make_v1(ws.db_url, dbh)
    db = dbh.connect(ws.db_url)
    db.execute("ALTER TABLE job ADD COLUMN state TEXT")  # the migration's own ALTER of job now fails
    db.close()
    before = dbh.dump(ws.db_url)
    r = dbh.run(ws, "init-db")
    assert r.returncode != 0 and "state" in r.stderr
    assert dbh.dump(ws.db_url) == before
    assert dbh.connect(ws.db_url).schema_version() == 1


def test_upgraded_database_numbers_new_files_after_the_old_ones(
    bare_workspace: Workspace, dbh: SimpleNamespace
) -> None:
    """The database, not the registering code, gives a new file the next number; none is ever changed."""
    ws = bare_workspace
    make_v1(ws.db_url, dbh)
    dbh.ok(ws, "init-db")
    db = dbh.connect(ws.db_url)
    for fid in ("EGAF7", "EGAF6"):
        db.execute(
            "INSERT INTO file (file_id, dataset_id, file_name, status, created_at, updated_at) "
            "VALUES (?, 'DS', ?, 'pending', ?, ?)",
            (fid, f"{fid}.c4gh", TS, TS),
        )
    got = {r["file_id"]: r["file_number"] for r in db.files(columns=("file_id", "file_number"))}
    assert got == {**FILE_NUMBERS, "EGAF7": 6, "EGAF6": 7}
    with pytest.raises(DatabaseError):
        db.execute("UPDATE file SET file_number = 99 WHERE file_id = 'EGAF7'")
    if db.backend == "postgresql":
        db.conn.rollback()
    assert db.file_row("EGAF7").file_number == 6  # type: ignore[union-attr]
    db.close()


def test_job_state_is_running_until_job_end(workspace: Workspace, dbh: SimpleNamespace) -> None:
    db = dbh.connect(workspace.db_url)
    db.job_start("j1", "process", "h", 2)
    assert db.query("SELECT state FROM job WHERE job_id = 'j1'") == [{"state": "running"}]
    db.job_end("j1", 0, "done")
    assert db.query("SELECT state FROM job WHERE job_id = 'j1'") == [{"state": "ended"}]
    db.close()
