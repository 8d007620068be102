"""Adoption needs proof (issue 12, findings 1-3 and 11): recovery records an archived copy that has no row
only when its sidecar's provenance names that row and the bytes still hash to it. Anything else at an
archive path is somebody else's: never adopted, never deleted, and its row's source stays.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from legampi import archive, checksum, db
from tests.faults.conftest import add_files, assert_safe, connect, rows_by_name, temp_files


def _set_rows(ws, sql: str, params: tuple) -> None:
    h = connect(ws)
    try:
        h.execute(sql, params)
    finally:
        h.close()


def _insert_file(ws, file_id: str, name: str, md5: str, sha256: str | None = None, status: str = "received") -> None:
    """A row as an older legampi (or a hand edit) could have left it, bypassing today's register checks."""
    h = connect(ws)
    try:
        ts = db.now()
        h.insert_many("dataset_log", ("dataset_id", "date_requested"), [("DSX", ts)], conflict="ON CONFLICT DO NOTHING")
        h.insert_many(
            "file",
            ("file_id", "dataset_id", "file_name", "md5", "sha256", "status", "created_at", "updated_at"),
            [(file_id, "DSX", name, md5, sha256, status, ts, ts)],
        )
    finally:
        h.close()


@pytest.mark.parametrize("with_sidecar", [False, True])
def test_foreign_file_at_archive_path_is_never_adopted(workspace, with_sidecar: bool) -> None:
    ws = workspace
    [e] = add_files(ws, "a", 1, 70_000)
    source = (ws.processing / e["name"]).read_bytes()
    final = ws.end_storage / "a00.bam.c4gh"
    final.write_bytes(b"someone else's bytes")
    if with_sidecar:  # a matching coreutils sidecar is no proof: it names no row
        side = final.with_name(final.name + ".sha256")
        side.write_text(
            subprocess.run(
                ["sha256sum", final.name], cwd=final.parent, capture_output=True, text=True, check=True
            ).stdout
        )
    rec = ws.legampi("recover", check=False)
    assert rec.returncode == 1 and "recorded 0 archived" in rec.stdout, rec.stdout + rec.stderr
    assert "archive_conflict" in rec.stdout and e["name"] in rec.stdout
    run = ws.mpi(2, "process", check=False)
    assert run.returncode == 1, run.stdout + run.stderr
    row = rows_by_name(ws)[e["name"]]
    assert row["status"] == "failed" and "already exists" in row["error"], row
    assert str(final) in row["error"] and str(ws.processing / e["name"]) in row["error"]
    assert final.read_bytes() == b"someone else's bytes"
    assert (ws.processing / e["name"]).read_bytes() == source
    again = ws.mpi(2, "process", "--retry-failed", check=False)  # a rerun never adopts it either
    assert again.returncode == 1 and rows_by_name(ws)[e["name"]]["status"] == "failed"
    assert (ws.processing / e["name"]).read_bytes() == source and final.read_bytes() == b"someone else's bytes"


def test_two_names_one_archive_path_the_loser_is_not_adopted(workspace) -> None:
    ws = workspace
    [e] = add_files(ws, "twin", 1, 5000)
    twin = "twin00.bam"  # plain name mapping to the same archive path as twin00.bam.c4gh
    (ws.processing / twin).write_bytes(b"the plain twin's own bytes")
    import hashlib

    _insert_file(ws, "EGAF-TWIN", twin, hashlib.md5(b"the plain twin's own bytes").hexdigest())
    first = ws.mpi(2, "process", check=False)
    assert first.returncode == 1
    rows = rows_by_name(ws)
    # the overlapped pipeline may commit either twin first: exactly one wins, the other fails
    winner, loser = (e["name"], twin) if rows[e["name"]]["status"] == "available" else (twin, e["name"])
    assert rows[winner]["status"] == "available" and rows[loser]["status"] == "failed", rows
    assert "already exists" in rows[loser]["error"], rows[loser]["error"]
    final = ws.end_storage / "twin00.bam.c4gh"
    sidecar = checksum.read_sidecar(final.with_name(final.name + ".sha256"))
    assert sidecar[0] == checksum.hash_file(final) and sidecar[2]["file_id"] == rows[winner]["file_id"]
    second = ws.legampi("recover", check=False)
    assert second.returncode == 1 and "recorded 0 archived" in second.stdout, second.stdout
    assert "archived for file" in second.stdout and rows[loser]["file_id"] in second.stdout
    rows = rows_by_name(ws)
    assert rows[loser]["status"] == "failed" and (ws.processing / loser).is_file()
    assert rows[winner]["status"] == "available" and not (ws.processing / winner).exists()


def test_tampered_unrecorded_copy_is_not_adopted_until_it_matches(workspace) -> None:
    """A copy whose provenance is right but whose bytes changed is reported, not adopted."""
    ws = workspace
    set_keep = ws.config.read_text().replace("[workspaces]\n", "[workspaces]\nkeep_processed = true\n")
    ws.config.write_text(set_keep)
    [e] = add_files(ws, "t", 1, 70_000)
    ws.mpi(2, "process")
    final = ws.end_storage / "t00.bam.c4gh"
    # the crash window: archived and linked, but the row never committed
    _set_rows(ws, "UPDATE file SET status = 'received', archive_path = NULL WHERE file_name = ?", (e["name"],))
    good = final.read_bytes()
    final.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    rep = ws.legampi("recover", check=False)
    assert rep.returncode == 1 and "recorded 0 archived" in rep.stdout and "hashes to sha256" in rep.stdout, rep.stdout
    assert rows_by_name(ws)[e["name"]]["status"] == "received"
    final.write_bytes(good)
    rep = ws.legampi("recover")
    assert "recorded 1 archived" in rep.stdout, rep.stdout
    row = rows_by_name(ws)[e["name"]]
    assert row["status"] == "available" and row["archive_checksum"] == checksum.hash_file(final)


def test_adoption_refused_after_the_expected_checksum_changed(workspace) -> None:
    """An amended manifest checksum no longer matches the copy's provenance: not adopted."""
    ws = workspace
    ws.config.write_text(ws.config.read_text().replace("[workspaces]\n", "[workspaces]\nkeep_processed = true\n"))
    [e] = add_files(ws, "m", 1, 7_000)
    ws.mpi(2, "process")
    _set_rows(ws, "UPDATE file SET status = 'received', md5 = ? WHERE file_name = ?", ("0" * 32, e["name"]))
    rep = ws.legampi("recover", check=False)
    assert rep.returncode == 1 and "recorded 0 archived" in rep.stdout, rep.stdout
    assert "the row expects " + "0" * 32 in rep.stdout


def test_overlong_registered_name_does_not_stop_recovery_or_the_job(workspace) -> None:
    ws = workspace
    files = add_files(ws, "ok", 2, 3000)
    _insert_file(ws, "EGAF-LONG", "x" * 300 + ".bam.c4gh", "1" * 32)
    rec = ws.legampi("recover")
    assert rec.returncode == 0, rec.stderr
    ws.mpi(2, "process")
    assert_safe(ws, files, complete=True)


def test_recover_keeps_temps_of_a_live_rekey_job(workspace) -> None:
    ws = workspace
    [e] = add_files(ws, "r", 1, 3000)
    ws.mpi(2, "process")
    final = ws.end_storage / "r00.bam.c4gh"
    temp = final.with_name(archive.temp_name(final.name))
    temp.write_bytes(b"half of a rotated copy")
    h = connect(ws)
    try:  # this test process stands in for the live rekey job (same host, pid alive)
        h.job_start("rekey-live", "rekey", __import__("socket").gethostname(), 2)
        h.execute("UPDATE job SET pid = ? WHERE job_id = ?", (os.getpid(), "rekey-live"))
    finally:
        h.close()
    ws.legampi("recover")
    assert temp.exists(), "recover removed a live rekey job's temp file"
    _set_rows(ws, "UPDATE job SET ended_at = ? WHERE job_id = ?", (db.now(), "rekey-live"))
    ws.legampi("recover")
    assert not temp.exists() and not temp_files(ws)


def test_recover_marks_jobs_whose_processes_are_gone_as_died(workspace) -> None:
    ws = workspace
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    h = connect(ws)
    try:
        host = __import__("socket").gethostname()
        h.job_start("gone", "process", host, 3)
        h.job_start("alive", "process", host, 3)
        h.execute("UPDATE job SET pid = ? WHERE job_id = ?", (dead.pid, "gone"))
        h.execute("UPDATE job SET pid = ? WHERE job_id = ?", (os.getpid(), "alive"))
    finally:
        h.close()
    rep = ws.legampi("recover")
    assert "job died: gone" in rep.stdout, rep.stdout
    h = connect(ws)
    try:
        jobs = {j["job_id"]: j for j in h.query("SELECT job_id, state, ended_at FROM job")}
    finally:
        h.close()
    assert jobs["gone"]["state"] == "died" and jobs["gone"]["ended_at"] is not None
    assert jobs["alive"]["state"] == "running" and jobs["alive"]["ended_at"] is None


def test_recover_removes_a_leftover_source_only_when_it_is_the_archived_one(workspace) -> None:
    """A source left in processing after its row was committed is removed; a different file of that name
    (another size than the one archived) is reported and left alone."""
    ws = workspace
    ws.config.write_text(ws.config.read_text().replace("[workspaces]\n", "[workspaces]\nkeep_processed = true\n"))
    a, b = add_files(ws, "left", 2, 3000)
    ws.mpi(2, "process")
    ws.config.write_text(ws.config.read_text().replace("keep_processed = true\n", ""))
    (ws.processing / b["name"]).write_bytes(b"a different file that arrived under the same name")
    rep = ws.legampi("recover", check=False)
    assert rep.returncode == 1 and f"source removed: {a['name']}" in rep.stdout, rep.stdout
    assert "not the archived file, left alone" in rep.stdout
    assert not (ws.processing / a["name"]).exists() and (ws.processing / b["name"]).is_file()
