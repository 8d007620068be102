"""A real S3 server for the S3 archive tests: one SeaweedFS `weed mini` per test session.

In-process mocks accept wrong checksums and any credentials; these tests need a server that refuses
them. The server binds only 127.0.0.1 on free ports and is stopped by pid at the end of the session.
Each test gets its own key prefix in one bucket, so tests never see each other's objects.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from legampi.config import DatabaseConfig
from legampi.db import Database
from legampi.s3config import ArchiveConfig
from legampi.s3local import LocalS3
from legampi.s3store import S3Store
from tests.conftest import BIN, Workspace, make_workspace
from tests.faults.conftest import set_options

BUCKET = "archive"
C4GH = str(BIN / "crypt4gh")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    server = LocalS3(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        store = S3Store(ArchiveConfig("s3", server.endpoint, BUCKET), server.credentials)
        store.client.create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.stop()


def archive_config(server: LocalS3, prefix: str | None = None, bucket: str = BUCKET) -> ArchiveConfig:
    """An [archive] for SERVER with a fresh key prefix (this test's own corner of the bucket)."""
    return ArchiveConfig("s3", server.endpoint, bucket, prefix if prefix is not None else f"t-{uuid.uuid4().hex[:10]}/")


@pytest.fixture
def store(seaweed: LocalS3) -> S3Store:
    """A store on the session's server under a prefix of this test's own."""
    return S3Store(archive_config(seaweed), seaweed.credentials, max_attempts=2)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """An archive key pair (secret, public) written by the crypt4gh package."""
    from tests.conftest import make_keypair

    return make_keypair(tmp_path, "archive")


class S3Workspace:
    """A workspace whose archive is this test's prefix of the session's bucket (no end_storage)."""

    def __init__(self, ws: Workspace, server: LocalS3, bucket: str = BUCKET) -> None:
        self.ws, self.server = ws, server
        self.cfg = archive_config(server, bucket=bucket)
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


def decrypt_md5(sk: Path, data: bytes) -> str:
    p = subprocess.run([C4GH, "decrypt", "--sk", str(sk)], input=data, capture_output=True, check=False)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return hashlib.md5(p.stdout).hexdigest()


def fetch_with_boto3(s3: S3Workspace, location: str) -> bytes:
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
