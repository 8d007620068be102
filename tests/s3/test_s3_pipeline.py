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
from legampi.s3local import LocalS3
from legampi.s3store import S3Store
from tests.conftest import BIN, Workspace, make_keypair, make_workspace
from tests.faults.conftest import add_files, finish, kill, poll, set_options, start_mpi, wait_ranks
from tests.s3.conftest import archive_config

MB = 1 << 20
C4GH = str(BIN / "crypt4gh")
pytestmark = pytest.mark.mpi


class S3Workspace:
    """A workspace whose archive is this test's prefix of the session's bucket (no end_storage)."""

    def __init__(self, ws: Workspace, server: LocalS3) -> None:
        self.ws, self.server = ws, server
        self.cfg = archive_config(server)
        self.store = S3Store(self.cfg, server.credentials)
        c = server.credentials
        self.env = {"AWS_ACCESS_KEY_ID": c.access_key, "AWS_SECRET_ACCESS_KEY": c.secret_key}
        set_options(
            ws,
            archive={
                "backend": "s3",
                "s3_endpoint": server.endpoint,
                "s3_bucket": self.cfg.s3_bucket,
                "s3_prefix": self.cfg.s3_prefix,
            },
            workspaces={"end_storage": None},
        )
        os.environ.update(self.env)  # helpers of tests/faults start legampi with the test's environment

    def legampi(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.ws.legampi(*args, env={**self.env, **kw.pop("env", {})}, **kw)

    def mpi(self, n: int, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.ws.mpi(n, *args, env={**self.env, **kw.pop("env", {})}, **kw)

    def rows(self) -> dict[str, dict[str, Any]]:
        db = Database.connect(DatabaseConfig(url=self.ws.db_url))
        try:
            return {r["file_name"]: r for r in db.files()}
        finally:
            db.close()

    def location(self, name: str) -> str:
        return self.store.location(name.removesuffix(".c4gh") + ".c4gh")


@pytest.fixture
def s3ws(tmp_path: Path, seaweed: LocalS3) -> Any:
    saved = dict(os.environ)
    ws = make_workspace(tmp_path, f"sqlite:///{tmp_path / 'tracking.db'}")
    ws.legampi("init-db")
    yield S3Workspace(ws, seaweed)
    os.environ.clear()
    os.environ.update(saved)


def _decrypt_md5(sk: Path, data: bytes) -> str:
    p = subprocess.run([C4GH, "decrypt", "--sk", str(sk)], input=data, capture_output=True, check=False)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return hashlib.md5(p.stdout).hexdigest()


def _fetch_with_boto3(s3: S3Workspace, location: str) -> bytes:
    """An object fetched with plain boto3 (not legampi's client), by its recorded s3:// location."""
    import boto3

    bucket, _, key = location.removeprefix("s3://").partition("/")
    c = s3.server.credentials
    client = boto3.client(
        "s3",
        endpoint_url=s3.server.endpoint,
        aws_access_key_id=c.access_key,
        aws_secret_access_key=c.secret_key,
        region_name="us-east-1",
    )
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


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
        data = _fetch_with_boto3(s3, r["archive_path"])
        assert hashlib.sha256(data).hexdigest() == r["archive_checksum"]
        assert _decrypt_md5(s3.ws.archive_sk, data) == e["md5"] == r["md5"]
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
    assert _decrypt_md5(s3.ws.archive_sk, _fetch_with_boto3(s3, r["archive_path"])) == big[0]["md5"]
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
        assert _decrypt_md5(rsk, (out / e["name"]).read_bytes()) == e["md5"]
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
    data = _fetch_with_boto3(s3, r["archive_path"])
    assert hashlib.sha256(data).hexdigest() == res.new_checksum and _decrypt_md5(nsk, data) == e["md5"]
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
    from io import StringIO

    from legampi.demo import run

    out = StringIO()
    assert run(tmp_path / "demo", 6, 2, out=out, archive="s3") == 0, out.getvalue()
    text = out.getvalue()
    assert "local S3 server (SeaweedFS)" in text and "s3://archive/legampi/" in text
    assert list((tmp_path / "demo" / "archive").iterdir()) == []
