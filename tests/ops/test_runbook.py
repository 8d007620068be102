"""docs/operations.md followed to the letter: re-transfer, key rotation, database backup and restore.

Each test runs the runbook's commands (the real `legampi` executable) in the order the runbook gives
them, so a runbook step that stops working fails here.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Workspace, make_keypair

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _files(ws: Workspace) -> dict[str, dict]:
    return {f["file_name"]: f for f in json.loads(ws.legampi("status", "--json").stdout)["files"]}


def _register(ws: Workspace, dataset: str, entries: list[dict]) -> None:
    ws.legampi("register", str(ws.manifest(dataset, entries)), "--dataset", dataset)


def _monitor_until_moved(ws: Workspace) -> None:
    for _ in range(3):  # pass_limit = 2: seen, unchanged, moved
        ws.legampi("monitor")


@sqlite_only
def test_re_transfer_of_a_failed_file(workspace: Workspace, tmp_path: Path) -> None:
    ws = workspace
    good = ws.add_file("DS/x.bam.c4gh", 50_000, where="receiving")
    keep = tmp_path / "good-copy.c4gh"
    shutil.copy(ws.receiving / "DS/x.bam.c4gh", keep)
    _register(ws, "DS", [good])
    with open(ws.receiving / "DS/x.bam.c4gh", "r+b") as fh:  # the transfer damaged the file
        fh.truncate(30_000)
    _monitor_until_moved(ws)
    assert ws.legampi("process", check=False).returncode == 1
    row = _files(ws)["DS/x.bam.c4gh"]
    assert row["status"] == "failed" and list(ws.end_storage.rglob("*.c4gh")) == []

    # the runbook's re-transfer: the bad copy aside, the row back to pending, a new transfer
    rejected = tmp_path / "rejected"
    rejected.mkdir()
    shutil.move(ws.processing / "DS/x.bam.c4gh", rejected / "x.bam.c4gh")
    ws.legampi("update", row["file_id"], "pending", "--reason", "re-transfer requested")
    shutil.copy(keep, ws.receiving / "DS/x.bam.c4gh")
    _monitor_until_moved(ws)
    ws.legampi("process")
    assert _files(ws)["DS/x.bam.c4gh"]["status"] == "available"
    assert (ws.end_storage / "DS/x.bam.c4gh").is_file()


@sqlite_only
def test_key_rotation_as_the_runbook_orders_it(workspace: Workspace) -> None:
    ws = workspace
    first = [ws.add_file(f"DS/a{i}.bam.c4gh", 20_000 + i) for i in range(3)]
    _register(ws, "DS", first)
    ws.legampi("process")
    new_sk, new_pk = make_keypair(ws.root / "keys", "archive-2027")

    # 2. rotate with the old secret key configured
    r = ws.legampi("rekey", "--new-archive-public-key", str(new_pk), "--new-archive-secret-key", str(new_sk))
    assert "3 rekeyed" in r.stdout and "REMINDER" in r.stdout
    # meanwhile a file is archived for the old key
    late = ws.add_file("DS/late.bam.c4gh", 7_000)
    _register(ws, "DS2", [late])
    ws.legampi("process")

    # 3. the public key first; 4. once more, still with the old secret key: catches `late`
    text = ws.config.read_text()
    ws.config.write_text(text.replace(f"archive_public_key = {ws.archive_pk}", f"archive_public_key = {new_pk}"))
    r = ws.legampi("rekey", "--new-archive-public-key", str(new_pk))
    assert "1 file(s) to rotate, 1 rekeyed" in r.stdout and "3 already on the new key" in r.stdout, r.stdout
    assert "REMINDER" not in r.stdout
    # files archived from now on are for the new key
    newest = ws.add_file("DS/newest.bam.c4gh", 9_000)
    _register(ws, "DS3", [newest])
    ws.legampi("process")

    # 5. the secret key; 6. audit everything with it
    text = ws.config.read_text()
    ws.config.write_text(text.replace(f"archive_secret_key = {ws.archive_sk}", f"archive_secret_key = {new_sk}"))
    r = ws.legampi("verify-archive", "--decrypt")
    assert "5 archived file(s) checked with decryption: 5 ok, 0 mismatch, 0 missing, 0 unexpected" in r.stdout


def _documented_python_backup() -> list[str]:
    """The runbook's Python one-liner for an SQLite online backup, as an argv (without the two paths)."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    [line] = [x for x in lines if x.startswith("python3 -c 'import sqlite3")]
    code = line.split("'")[1]
    return [sys.executable, "-c", code]


@sqlite_only
def test_sqlite_backup_while_writing_then_restore_and_recover(workspace: Workspace, tmp_path: Path) -> None:
    ws = workspace
    entries = [ws.add_file(f"DS/f{i}.bam.c4gh", 30_000 + i, where="receiving") for i in range(4)]
    _register(ws, "DS", entries)
    _monitor_until_moved(ws)
    db = Path(ws.db_url.removeprefix("sqlite:///"))
    backup = tmp_path / "backup" / "tracking.db"
    backup.parent.mkdir()
    # a writer holds an open transaction with uncommitted rows while the backup runs
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("CREATE TABLE scratch (x)")
    writer.execute("INSERT INTO scratch VALUES (1)")
    subprocess.run([*_documented_python_backup(), str(db), str(backup)], check=True, timeout=60)
    writer.execute("ROLLBACK")
    writer.close()
    check = sqlite3.connect(backup)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert check.execute("SELECT name FROM sqlite_master WHERE name = 'scratch'").fetchall() == []
    assert check.execute("SELECT count(*) FROM file WHERE status = 'received'").fetchone() == (4,)
    check.close()

    ws.legampi("process")  # after the backup: the backup knows nothing of these archived copies
    assert {f["status"] for f in _files(ws).values()} == {"available"}

    # restore: the old database aside (with -wal/-shm), the backup in place, init-db, recover
    for suffix in ("", "-wal", "-shm"):
        old = Path(f"{db}{suffix}")
        if old.exists():
            old.rename(tmp_path / f"old{suffix}")
    shutil.copy(backup, db)
    ws.legampi("init-db")
    assert {f["status"] for f in _files(ws).values()} == {"received"}
    r = ws.legampi("recover")
    assert "recorded 4 archived copy(ies) that had no row (provenance checked)" in r.stdout
    assert {f["status"] for f in _files(ws).values()} == {"available"}
    r = ws.legampi("verify-archive")
    assert "4 ok, 0 mismatch, 0 missing, 0 unexpected" in r.stdout
