"""`[archive] backend = s3` end to end against a real S3 server (SeaweedFS): real `mpiexec legampi
process` into the bucket, a foreign object at the key, a refused secret key, a worker SIGKILLed mid
upload and the rerun, recover's adoption and orphan aborts, verify-archive (with and without
--decrypt), export, rekey, and the crypt4gh CLI on an object fetched with boto3.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from html import escape
from pathlib import Path
from typing import Any

import pytest

from legampi.config import DatabaseConfig
from legampi.db import Database
from tests.conftest import BIN, make_keypair
from tests.faults.conftest import add_files, finish, kill, poll, set_options, start_mpi, wait_ranks
from tests.s3.conftest import S3Workspace, decrypt_md5, fetch_with_boto3

MB = 1 << 20
pytestmark = pytest.mark.mpi


def test_process_into_s3_under_mpi_then_verify_status_and_crypt4gh(s3ws: S3Workspace) -> None:
    s3 = s3ws
    files = add_files(s3.ws, "big", 1, 12 * MB, block=os.urandom(MB)) + add_files(s3.ws, "small", 3, 200_000, "DS2")
    p = s3.mpi(2, "process")
    assert "4 available, 0 failed" in p.stdout, p.stdout + p.stderr
    assert "aborted 0 incomplete S3 upload(s)" in p.stderr
    rows = s3.rows()
    for e in files:
        r = rows[e["name"]]
        assert r["status"] == "available" and r["archive_path"] == s3.location(e["name"]), r
        assert not (s3.ws.processing / e["name"]).exists()
        data = fetch_with_boto3(s3, r["archive_path"])
        assert hashlib.sha256(data).hexdigest() == r["archive_checksum"]
        assert decrypt_md5(s3.ws.archive_sk, data) == e["md5"] == r["md5"]
    big = s3.store.head(files[0]["name"])
    assert big is not None and big.checksum_sha256 and big.checksum_sha256.endswith("-3")  # 3 parts of 5 MiB
    assert s3.store.list_uploads() == []
    assert list(s3.ws.root.glob("archive/**/*.c4gh")) == []  # nothing went to the folder
    status = json.loads(s3.legampi("status", "--json").stdout)
    assert {f["archive_path"] for f in status["files"]} == {s3.location(e["name"]) for e in files}
    report = s3.ws.root / "report.html"
    s3.legampi("report", "-o", str(report))
    html = report.read_text()
    for e in files:  # issue 16: the report names where each archived file lives
        assert f"<code>{escape(s3.location(e['name']))}</code>" in html
        assert s3.location(e["name"]).startswith(f"s3://{s3.cfg.s3_bucket}/")
    v = s3.legampi("verify-archive")
    assert "4 ok, 0 mismatch, 0 missing, 0 unexpected" in v.stdout, v.stdout + v.stderr
    v = s3.mpi(2, "verify-archive", "--decrypt")
    assert "with decryption: 4 ok" in v.stdout, v.stdout + v.stderr


def test_verify_reports_a_changed_object_and_an_unexpected_one(s3ws: S3Workspace) -> None:
    from legampi.verify import AuditTask, audit_file, unexpected_files

    s3 = s3ws
    (e,) = add_files(s3.ws, "f", 1, 300_000)
    s3.legampi("process")
    r = s3.rows()[e["name"]]
    rel = e["name"]
    s3.store.client.put_object(Bucket=s3.store.bucket, Key=s3.store.key("stray.c4gh"), Body=b"x")
    task = AuditTask(r["file_id"], r["dataset_id"], r["archive_path"], r["archive_checksum"], "sha256", r["md5"], None)
    assert audit_file(task, None, s3.store).result == "ok"
    assert unexpected_files(None, [r], (".c4gh",), _s3_archive(s3)) == ["stray.c4gh"]
    s3.store.client.delete_object(Bucket=s3.store.bucket, Key=s3.store.key(rel))
    s3.store.client.put_object(Bucket=s3.store.bucket, Key=s3.store.key(rel), Body=b"tampered")
    got = audit_file(task, None, s3.store)
    assert got.result == "mismatch" and "!= recorded" in got.details and "provenance" in got.details
    s3.store.client.delete_object(Bucket=s3.store.bucket, Key=s3.store.key(rel))
    assert audit_file(task, None, s3.store).result == "missing"


def _s3_archive(s3: S3Workspace) -> Any:
    from legampi import storage

    arch = storage.open_archive(s3.cfg, None)
    storage._STORES[s3.cfg] = s3.store
    return arch


def test_a_foreign_object_at_the_key_is_an_archive_conflict_and_the_source_stays(s3ws: S3Workspace) -> None:
    s3 = s3ws
    (e,) = add_files(s3.ws, "f", 1, 100_000)
    key = s3.store.key(e["name"])
    s3.store.client.put_object(Bucket=s3.store.bucket, Key=key, Body=b"someone else's")
    p = s3.legampi("process", check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    r = s3.rows()[e["name"]]
    assert r["status"] != "available" and "already exists" in (r["error"] or "") and "not overwritten" in r["error"]
    assert (s3.ws.processing / e["name"]).is_file()
    assert s3.store.client.get_object(Bucket=s3.store.bucket, Key=key)["Body"].read() == b"someone else's"
    rec = s3.legampi("recover", check=False)  # exit 1: a problem to report
    assert rec.returncode == 1 and "not adopted" in rec.stdout and "no legampi provenance" in rec.stdout


def test_a_wrong_secret_key_stops_the_job_before_any_file_changes(s3ws: S3Workspace) -> None:
    s3 = s3ws
    files = add_files(s3.ws, "f", 2, 100_000)
    before = {n: (r["status"], r["claimed_by"]) for n, r in s3.rows().items()}
    p = s3.mpi(2, "process", check=False, env={"AWS_SECRET_ACCESS_KEY": "wrong-secret-0123456789"})
    assert p.returncode == 2, p.stdout + p.stderr
    assert "not starting" in p.stderr and "refused the credentials" in p.stderr
    assert s3.server.credentials.access_key in p.stderr and "wrong-secret" not in p.stdout + p.stderr
    assert {n: (r["status"], r["claimed_by"]) for n, r in s3.rows().items()} == before
    assert all((s3.ws.processing / e["name"]).is_file() for e in files)
    assert list(s3.store.iter_objects()) == [] and s3.store.list_uploads() == []


def test_sigkilled_worker_mid_upload_then_rerun_and_recover(s3ws: S3Workspace) -> None:
    s3 = s3ws
    big = add_files(s3.ws, "big", 1, 150 * MB, block=os.urandom(MB))
    job = start_mpi(s3.ws, 2, "process", tag="killed")
    ranks = wait_ranks(job, 2)
    poll(lambda: s3.store.list_uploads(), "the big file's multipart upload", timeout=60, interval=0.05)
    kill(ranks[1])
    rc, _out, err = finish(job, timeout=60)
    assert rc != 0, err
    name = big[0]["name"]
    assert s3.store.head(name) is None, "a half-written object became visible"
    assert (s3.ws.processing / name).is_file()
    (orphan,) = s3.store.list_uploads()
    rerun = s3.mpi(2, "process")
    assert "1 available" in rerun.stdout, rerun.stdout + rerun.stderr
    r = s3.rows()[name]
    assert r["status"] == "available"
    assert decrypt_md5(s3.ws.archive_sk, fetch_with_boto3(s3, r["archive_path"])) == big[0]["md5"]
    # the dead job's upload is aborted once it is older than recovery's margin
    from legampi.recovery import UPLOAD_MARGIN

    time.sleep(max(0.0, UPLOAD_MARGIN.total_seconds() - (time.time() - orphan.initiated.timestamp())) + 1)
    rec = s3.legampi("recover")
    assert "aborted 1 incomplete S3 upload(s)" in rec.stdout + rec.stderr, rec.stdout + rec.stderr
    assert orphan.upload_id in rec.stdout + rec.stderr
    assert s3.store.list_uploads() == []


def test_recover_adopts_an_unrecorded_object_only_with_proof(s3ws: S3Workspace) -> None:
    from legampi import storage
    from legampi.stream import FileTask, PipelineContext, process_file

    s3 = s3ws
    (e,) = add_files(s3.ws, "f", 1, 7 * MB, block=os.urandom(MB))
    r = s3.rows()[e["name"]]
    storage._STORES[s3.cfg] = s3.store
    ctx = PipelineContext(
        s3.ws.processing, None, None, (".c4gh",), _raw(s3.ws.inbox_sk), _raw_pk(s3.ws.archive_pk), archive=s3.cfg
    )
    res = process_file(FileTask(r["file_id"], r["dataset_id"], e["name"], e["md5"], e["sha256"]), ctx)
    assert res.status == "available", res.error  # archived, as by a job killed before rank 0 recorded it
    rec = s3.legampi("recover")
    assert "recorded 1 archived copy" in rec.stdout + rec.stderr, rec.stdout + rec.stderr
    row = s3.rows()[e["name"]]
    assert row["status"] == "available" and row["archive_path"] == res.archive_path
    assert row["archive_checksum"] == res.archive_checksum and not (s3.ws.processing / e["name"]).exists()


def _raw(sk: Path) -> bytes:
    from legampi.keys import load_secret_key

    return load_secret_key(sk, None)


def _raw_pk(pk: Path) -> bytes:
    from legampi.keys import load_public_key

    return load_public_key(pk)


def test_export_reads_objects_from_s3(s3ws: S3Workspace, tmp_path: Path) -> None:
    s3 = s3ws
    files = add_files(s3.ws, "f", 2, 6 * MB, block=os.urandom(MB))
    s3.legampi("process")
    set_options(s3.ws, workspaces={"end_storage": str(s3.ws.end_storage)})  # run_export still checks it
    rsk, rpk = make_keypair(tmp_path, "researcher")
    out = tmp_path / "export"
    p = s3.legampi("export", "DS1", "--recipient-pk", str(rpk), "--to", str(out), "--verify")
    assert "exported dataset DS1: 2 file(s)" in p.stdout, p.stdout + p.stderr
    for e in files:
        assert decrypt_md5(rsk, (out / e["name"]).read_bytes()) == e["md5"]
    check = subprocess.run(["sha256sum", "-c", "DS1.sha256"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("size", [300_000, 7 * MB], ids=["single-put", "multipart"])
def test_rekey_writes_a_new_object_switched_over_with_if_match(s3ws: S3Workspace, tmp_path: Path, size: int) -> None:
    from legampi import config
    from legampi.rekey import RekeyTask, load_rekey_keys, rekey_file

    s3 = s3ws
    (e,) = add_files(s3.ws, "f", 1, size, block=os.urandom(MB))
    s3.legampi("process")
    r = s3.rows()[e["name"]]
    nsk, npk = make_keypair(tmp_path, "new")
    cfg = config.load(s3.ws.config)  # also tells this process's storage where s3:// locations are
    keys = load_rekey_keys(cfg, npk, nsk)
    task = RekeyTask(
        r["file_id"],
        r["dataset_id"],
        r["archive_path"],
        r["archive_checksum"],
        "sha256",
        r["archive_key"],
        r["md5"],
        None,
    )
    res = rekey_file(task, keys)
    assert res.result == "rekeyed", res.details
    data = fetch_with_boto3(s3, r["archive_path"])
    assert hashlib.sha256(data).hexdigest() == res.new_checksum and decrypt_md5(nsk, data) == e["md5"]
    assert s3.store.list_uploads() == []
    # a crash before the row was updated: verify says a rotation is pending, a rerun records it as is
    v = s3.legampi("verify-archive", check=False)
    assert v.returncode == 1 and "a key rotation is pending" in v.stdout, v.stdout
    again = rekey_file(task, keys)
    assert (again.result, again.new_checksum) == ("recovered", res.new_checksum), again.details
    db = Database.connect(DatabaseConfig(url=s3.ws.db_url))
    row = {
        "file_id": r["file_id"],
        "dataset_id": r["dataset_id"],
        "old_checksum": r["archive_checksum"],
        "new_checksum": again.new_checksum,
        "new_key": keys.new_fp,
        "archive_size": again.archive_size,
        "details": again.details,
    }
    assert db.record_rekeys([row]) == [r["file_id"]]
    db.close()
    set_options(s3.ws, crypto={"archive_secret_key": str(nsk), "archive_public_key": str(npk)})
    v = s3.legampi("verify-archive", "--decrypt")
    assert "with decryption: 1 ok" in v.stdout, v.stdout + v.stderr


def test_demo_archives_into_a_local_s3(tmp_path: Path) -> None:
    """`legampi demo --archive s3`, the command the issue names: its own SeaweedFS, stopped at the end."""
    folder = tmp_path / "demo"
    cmd = [str(BIN / "legampi"), "demo", "--archive", "s3", "--files", "6", "--ranks", "2", str(folder)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "local S3 server (SeaweedFS)" in p.stdout and "s3://archive/legampi/" in p.stdout
    assert list((folder / "archive").iterdir()) == []
    left = [d for d in Path("/proc").iterdir() if d.name.isdigit() and str(folder) in _cmdline(d)]
    assert left == [], "the demo's SeaweedFS is still running"


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_rekey_command_rotates_every_object_and_status_shows_where_they_live(s3ws: S3Workspace, tmp_path: Path) -> None:
    s3 = s3ws
    files = add_files(s3.ws, "f", 2, 300_000) + add_files(s3.ws, "g", 1, 7 * MB, "DS2", block=os.urandom(MB))
    s3.mpi(2, "process")
    before = {n: r["archive_checksum"] for n, r in s3.rows().items()}
    nsk, npk = make_keypair(tmp_path, "new")
    p = s3.legampi("rekey", "--new-archive-public-key", str(npk), "--new-archive-secret-key", str(nsk))
    assert "3 file(s) to rotate, 3 rekeyed, 0 recovered" in p.stdout, p.stdout + p.stderr
    rows = s3.rows()
    for e in files:
        r = rows[e["name"]]
        assert r["archive_path"] == s3.location(e["name"]) and r["archive_checksum"] != before[e["name"]]
        data = fetch_with_boto3(s3, r["archive_path"])
        assert hashlib.sha256(data).hexdigest() == r["archive_checksum"] and decrypt_md5(nsk, data) == e["md5"]
    assert s3.store.list_uploads() == [] and len(list(s3.store.iter_objects())) == 3
    set_options(s3.ws, crypto={"archive_secret_key": str(nsk), "archive_public_key": str(npk)})
    v = s3.legampi("verify-archive", "--decrypt")
    assert "with decryption: 3 ok" in v.stdout, v.stdout + v.stderr
    table = s3.legampi("status").stdout  # the operator's view names every object's s3://bucket/key
    assert all(s3.location(e["name"]) in table for e in files), table


def test_rekey_and_verify_under_mpi_skip_an_object_another_live_job_holds(s3ws: S3Workspace, tmp_path: Path) -> None:
    """Issue 14 on the S3 backend: an object claimed by another live job is neither rotated nor audited
    (exit 5, named in the report); once it is released the next run rotates it."""
    import socket

    s3 = s3ws
    files = add_files(s3.ws, "f", 3, 70_000)
    s3.legampi("process")
    rows = s3.rows()
    held = rows[files[1]["name"]]
    before = fetch_with_boto3(s3, held["archive_path"])
    db = Database.connect(DatabaseConfig(url=s3.ws.db_url))
    try:
        db.job_start("other-job", "verify-archive", socket.gethostname(), 1)  # alive: this test's pid
        assert db.claim_archived([held["file_id"]], "other-job") == [held["file_id"]]
        nsk, npk = make_keypair(tmp_path, "new")
        p = s3.mpi(3, "rekey", "--new-archive-public-key", str(npk), "--new-archive-secret-key", str(nsk), check=False)
        assert p.returncode == 5, p.stdout + p.stderr
        assert "2 rekeyed" in p.stdout and "1 skipped because claimed by another live job" in p.stdout
        assert f"SKIPPED {held['archive_path']}: claimed by job other-job (verify-archive, " in p.stdout
        assert fetch_with_boto3(s3, held["archive_path"]) == before  # untouched
        v = s3.legampi("verify-archive", check=False)
        assert v.returncode == 5 and "2 ok, 0 mismatch, 0 missing, 0 unexpected; 1 skipped" in v.stdout, v.stdout
        assert db.release_archived(None, "other-job") == 1
    finally:
        db.close()
    p = s3.mpi(3, "rekey", "--new-archive-public-key", str(npk), "--new-archive-secret-key", str(nsk))
    assert "1 rekeyed" in p.stdout and "2 already on the new key, 0 skipped" in p.stdout, p.stdout
    set_options(s3.ws, crypto={"archive_secret_key": str(nsk), "archive_public_key": str(npk)})
    v = s3.legampi("verify-archive", "--decrypt")
    assert "with decryption: 3 ok" in v.stdout and "; 0 skipped" in v.stdout, v.stdout + v.stderr
    for e in files:
        assert decrypt_md5(nsk, fetch_with_boto3(s3, s3.rows()[e["name"]]["archive_path"])) == e["md5"]
