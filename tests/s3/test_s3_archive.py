"""The S3 archive against a real S3 server (SeaweedFS): uploads, never-overwrite, checksums refused,
credentials refused, a server dying mid-upload, orphan uploads, adoption proof, and crypt4gh decrypt.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ConnectionClosedError

from legampi.formats import IngestError
from legampi.provenance import record
from legampi.s3config import ArchiveConfig, Credentials
from legampi.s3local import LocalS3
from legampi.s3store import S3Store, examine, select_orphans
from legampi.s3writer import MIN_PART, S3ArchiveWriter
from tests.s3.conftest import archive_config

PART = MIN_PART  # 5 MiB parts: 12 MiB of data gives three parts cheaply
BIN = Path(sys.executable).parent
C4GH = shutil.which("crypt4gh", path=str(BIN)) or shutil.which("crypt4gh")


def _claim(rel: str, plain: bytes = b"", file_id: str = "EGAF001") -> dict[str, Any]:
    """The upload's claim: the registered checksums (known before the pass), no plain size yet."""
    return record(file_id, rel, "EGAD001", hashlib.md5(plain).hexdigest(), None, None, "fp0123456789abcd")


def _prov(rel: str, plain: bytes = b"", file_id: str = "EGAF001", size: int | None = None) -> dict[str, Any]:
    """What the verified pass hands to commit (provenance.record of the computed checksums)."""
    md5, sha = hashlib.md5(plain).hexdigest(), hashlib.sha256(plain).hexdigest()
    return record(file_id, rel, "EGAD001", md5, sha, len(plain) if size is None else size, "fp0123456789abcd")


def _upload(store: S3Store, rel: str, data: bytes, plain: bytes = b"", chunk: int = 777_777, **kw: Any) -> str:
    w = S3ArchiveWriter(store, rel, _claim(rel, plain, kw.pop("file_id", "EGAF001")), len(data), job_id="J1", **kw)
    for off in range(0, len(data), chunk):
        w.write(data[off : off + chunk])
    digest = w.finish()
    assert digest == hashlib.sha256(data).hexdigest()
    w.commit(_prov(rel, plain, w.claim["file_id"]))
    return digest


def _get(store: S3Store, rel: str) -> bytes:
    return store.client.get_object(Bucket=store.bucket, Key=store.key(rel))["Body"].read()


def test_small_object_single_put_with_full_provenance(store: S3Store) -> None:
    data, plain = secrets.token_bytes(300_000), b"plain text"
    digest = _upload(store, "d1/a.c4gh", data, plain)
    assert _get(store, "d1/a.c4gh") == data
    info = store.head("d1/a.c4gh")
    assert info is not None and info.size == len(data)
    assert info.checksum_sha256 == base64.b64encode(hashlib.sha256(data).digest()).decode()
    want = {**_prov("d1/a.c4gh", plain), "job_id": "J1", "archive_checksum": digest, "archive_checksum_type": "sha256"}
    assert info.provenance == want
    assert store.location("d1/a.c4gh") == f"s3://archive/{store.prefix}d1/a.c4gh"
    assert store.list_uploads() == []


@pytest.mark.parametrize("concurrency", [0, 2], ids=["in-line", "2-in-flight"])
def test_multipart_object_streams_parts_and_server_keeps_their_checksum(store: S3Store, concurrency: int) -> None:
    data, plain = secrets.token_bytes(12 << 20), b"plain"
    rel = "d1/big.c4gh"
    w = S3ArchiveWriter(store, rel, _claim(rel, plain), len(data), job_id="J7", part_size=PART, concurrency=concurrency)
    for off in range(0, len(data), 999_999):
        w.write(data[off : off + 999_999])
        # bounded: one part buffer (in-line), or one per part in flight plus the one filling
        assert len(w._buf) <= PART and len(w._pending) + len(w._free) <= concurrency
    w._drain(0)
    assert [u.rel for u in store.list_uploads()] == [rel]  # two parts stored, nothing visible
    assert store.head(rel) is None
    assert w.finish() == hashlib.sha256(data).hexdigest()
    assert store.head(rel) is None  # the last part is uploaded, still invisible
    w.commit(_prov(rel, plain))
    assert _get(store, rel) == data
    info = store.head(rel)
    assert info is not None and info.checksum_sha256 is not None and info.checksum_sha256.endswith("-3")
    assert info.provenance == {**_claim(rel, plain), "job_id": "J7", "part_size": PART}
    got = store.hash_object(rel)
    assert (got.size, got.digest, got.server_checksum_ok) == (len(data), hashlib.sha256(data).hexdigest(), True)
    assert store.list_uploads() == []


@pytest.mark.parametrize("size", [1000, 11 << 20], ids=["single-put", "multipart"])
def test_never_overwrites_an_existing_object(store: S3Store, size: int) -> None:
    first, second = secrets.token_bytes(size), secrets.token_bytes(size)
    _upload(store, "x/f.c4gh", first, part_size=PART)
    with pytest.raises(IngestError) as exc:
        _upload(store, "x/f.c4gh", second, file_id="EGAF002", part_size=PART)
    assert exc.value.kind == "archive_conflict"
    assert "not overwritten" in exc.value.message and "source is kept" in exc.value.message
    assert _get(store, "x/f.c4gh") == first
    assert store.list_uploads() == []  # the refused upload was aborted, its parts freed


def test_abort_leaves_nothing_visible_and_no_upload(store: S3Store) -> None:
    w = S3ArchiveWriter(store, "a/b.c4gh", _claim("a/b.c4gh"), 12 << 20, part_size=PART)
    w.write(secrets.token_bytes(12 << 20))
    assert len(store.list_uploads()) == 1
    w.abort()
    w.abort()  # idempotent
    assert store.head("a/b.c4gh") is None
    assert store.list_uploads() == []


@pytest.mark.parametrize("concurrency", [0, 2], ids=["in-line", "2-in-flight"])
def test_a_wrong_part_checksum_is_refused_by_the_server(store: S3Store, concurrency: int) -> None:
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()

    def tamper(request: Any, **kwargs: Any) -> None:
        request.headers.replace_header("x-amz-checksum-sha256", wrong)

    store.client.meta.events.register("before-sign.s3.UploadPart", tamper)
    w = S3ArchiveWriter(store, "c/d.c4gh", _claim("c/d.c4gh"), 12 << 20, part_size=PART, concurrency=concurrency)
    with pytest.raises(IngestError) as exc:
        w.write(secrets.token_bytes(12 << 20))
        w.finish()  # a part refused in a thread is reported at the latest here
    w.abort()
    assert exc.value.kind == "io" and "refused the data's checksum" in exc.value.message
    assert store.head("c/d.c4gh") is None and store.list_uploads() == []


def test_a_wrong_checksum_on_a_single_put_is_refused(store: S3Store) -> None:
    def tamper(request: Any, **kwargs: Any) -> None:
        request.headers.replace_header("x-amz-checksum-sha256", base64.b64encode(bytes(32)).decode())

    store.client.meta.events.register("before-sign.s3.PutObject", tamper)
    with pytest.raises(IngestError) as exc:
        _upload(store, "c/e.c4gh", secrets.token_bytes(5000))
    assert exc.value.kind == "io" and "checksum" in exc.value.message
    assert store.head("c/e.c4gh") is None


def test_a_wrong_secret_key_is_refused_without_showing_it(seaweed: LocalS3) -> None:
    secret = "Wr0ng-S3cret-" + secrets.token_hex(8)
    bad = S3Store(archive_config(seaweed), Credentials(seaweed.credentials.access_key, secret, None, "env"))
    for size in (1000, 6 << 20):
        with pytest.raises(IngestError) as exc:
            _upload(bad, "s/f.c4gh", secrets.token_bytes(size), part_size=PART)
        assert exc.value.kind == "config"
        assert "refused the credentials" in exc.value.message and secret not in exc.value.message
        assert f"access key {seaweed.credentials.access_key} from env" in exc.value.message
        assert secret not in repr(bad.credentials) and secret not in repr(bad)
    with pytest.raises(IngestError) as exc:
        bad.check()
    assert exc.value.kind == "config" and secret not in str(exc.value)


def test_server_stopped_mid_upload_is_an_io_error_and_leaves_nothing_visible(tmp_path: Path) -> None:
    server = LocalS3(tmp_path / "s3").start()
    try:
        cfg = ArchiveConfig("s3", server.endpoint, "arch", "p/")
        store = S3Store(cfg, server.credentials, connect_timeout=2, max_attempts=1)
        store.client.create_bucket(Bucket="arch")
        w = S3ArchiveWriter(store, "f.c4gh", _claim("f.c4gh"), 20 << 20, part_size=PART)
        w.write(secrets.token_bytes(6 << 20))  # part 1 uploaded once more data came
        w.write(secrets.token_bytes(1 << 20))
        server.kill()
        with pytest.raises(IngestError) as exc:
            w.write(secrets.token_bytes(5 << 20))
        assert exc.value.kind == "io" and server.endpoint in exc.value.message, exc.value.message
        w.abort()  # the server is gone: the upload stays, invisible, for recovery
        server.start()  # same folder, ports and identity
        store = S3Store(cfg, server.credentials, max_attempts=1)
        assert store.head("f.c4gh") is None
        orphans = select_orphans(store.list_uploads(), live_rels=set())
        assert [u.rel for u in orphans] == ["f.c4gh"]
        assert all(store.abort_upload(u) for u in orphans)
        assert store.list_uploads() == [] and store.head("f.c4gh") is None
    finally:
        server.stop()


def test_orphan_uploads_listed_and_only_dead_ones_aborted(store: S3Store) -> None:
    writers = {}
    for rel in ("live/a.c4gh", "dead/b.c4gh"):
        writers[rel] = S3ArchiveWriter(store, rel, _claim(rel), 6 << 20, part_size=PART)
        writers[rel].write(secrets.token_bytes(PART + 1))
    foreign = store.client.create_multipart_upload(Bucket=store.bucket, Key=store.key("not-ours.bin"))
    uploads = store.list_uploads()
    assert sorted(str(u.rel) for u in uploads) == ["None", "dead/b.c4gh", "live/a.c4gh"]
    first = min(u.initiated for u in uploads)
    assert select_orphans(uploads, {"live/a.c4gh"}, initiated_before=first) == []
    orphans = select_orphans(uploads, {"live/a.c4gh"})
    assert [u.rel for u in orphans] == ["dead/b.c4gh"]
    assert store.abort_upload(orphans[0])
    store.abort_upload(orphans[0])  # again: gone already (AWS says 404, SeaweedFS says yes): no error
    assert sorted(str(u.rel) for u in store.list_uploads()) == ["None", "live/a.c4gh"]
    writers["live/a.c4gh"].abort()
    store.client.abort_multipart_upload(
        Bucket=store.bucket, Key=store.key("not-ours.bin"), UploadId=foreign["UploadId"]
    )


@pytest.mark.parametrize("size", [2000, 11 << 20], ids=["single-put", "multipart"])
def test_examine_adopts_only_with_proof(store: S3Store, size: int) -> None:
    data, plain = secrets.token_bytes(size), b"the plaintext"
    digest = _upload(store, "e/f.c4gh", data, plain, part_size=PART)
    row = {"file_id": "EGAF001", "file_name": "e/f.c4gh", "md5": hashlib.md5(plain).hexdigest(), "sha256": None}
    v = examine(store, "e/f.c4gh", row)
    assert v.adopt and v.digest == digest and v.record is not None and v.record["file_id"] == "EGAF001"
    assert not examine(store, "e/f.c4gh", {**row, "file_id": "EGAF999"}).adopt
    assert not examine(store, "e/f.c4gh", {**row, "file_name": "e/f.cip"}).adopt
    assert not examine(store, "e/f.c4gh", {**row, "md5": "0" * 32}).adopt
    assert "no object" in examine(store, "e/nothing.c4gh", row).reason
    store.client.put_object(Bucket=store.bucket, Key=store.key("e/foreign.c4gh"), Body=data)
    assert "no legampi provenance" in examine(store, "e/foreign.c4gh", {**row, "file_name": "e/foreign.c4gh"}).reason


def test_examine_refuses_bytes_that_differ_from_the_recorded_checksum(store: S3Store) -> None:
    _upload(store, "g/h.c4gh", b"original bytes")
    info = store.head("g/h.c4gh")
    assert info is not None and info.provenance is not None
    other = b"replaced bytes"
    store.client.put_object(
        Bucket=store.bucket,
        Key=store.key("g/i.c4gh"),
        Body=other,
        Metadata={"legampi-provenance": __import__("json").dumps({**info.provenance, "file_name": "g/i.c4gh"})},
        ChecksumSHA256=base64.b64encode(hashlib.sha256(other).digest()).decode(),
    )
    row = {"file_id": "EGAF001", "file_name": "g/i.c4gh", "md5": hashlib.md5(b"").hexdigest()}
    v = examine(store, "g/i.c4gh", row)
    assert not v.adopt and "recorded" in v.reason


def test_a_lost_answer_to_complete_is_recognised_as_our_own_object(store: S3Store) -> None:
    """The server completed the upload but the answer was lost (botocore saw a closed connection): the
    object with our claim and composite checksum is ours, not a conflict."""
    calls = []

    def lose(http_response: Any, parsed: Any, **kwargs: Any) -> None:
        calls.append(1)
        raise ConnectionClosedError(endpoint_url=store.cfg.s3_endpoint)

    store.client.meta.events.register("after-call.s3.CompleteMultipartUpload", lose)
    data = secrets.token_bytes(11 << 20)
    _upload(store, "l/m.c4gh", data, part_size=PART)
    assert calls and _get(store, "l/m.c4gh") == data and store.list_uploads() == []


@pytest.mark.skipif(C4GH is None, reason="crypt4gh CLI not installed")
@pytest.mark.parametrize("size", [100_000, 11 << 20], ids=["single-put", "multipart"])
def test_crypt4gh_cli_decrypts_an_object_fetched_with_boto3(
    store: S3Store, keys: tuple[Path, Path], tmp_path: Path, size: int
) -> None:
    from legampi.formats.crypt4gh import encrypt_stream
    from legampi.keys import load_public_key

    sk, pk = keys
    plain = secrets.token_bytes(size)
    encrypted = b"".join(bytes(c) for c in encrypt_stream([plain], load_public_key(pk)))
    _upload(store, "c4/x.c4gh", encrypted, plain, part_size=PART)
    import boto3

    plain_client = boto3.client(
        "s3",
        endpoint_url=store.cfg.s3_endpoint,
        aws_access_key_id=store.credentials.access_key,
        aws_secret_access_key=store.credentials.secret_key,
        region_name="us-east-1",
    )
    fetched = tmp_path / "x.c4gh"
    plain_client.download_file(store.bucket, store.key("c4/x.c4gh"), str(fetched))
    with open(fetched, "rb") as fin:
        p = subprocess.run([C4GH, "decrypt", "--sk", str(sk)], stdin=fin, capture_output=True, check=False)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    assert hashlib.md5(p.stdout).hexdigest() == hashlib.md5(plain).hexdigest()
