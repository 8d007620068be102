"""A real S3 server for the S3 archive tests: one SeaweedFS `weed mini` per test session.

In-process mocks accept wrong checksums and any credentials; these tests need a server that refuses
them. The server binds only 127.0.0.1 on free ports and is stopped by pid at the end of the session.
Each test gets its own key prefix in one bucket, so tests never see each other's objects.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from legampi.s3config import ArchiveConfig
from legampi.s3local import LocalS3
from legampi.s3store import S3Store

BUCKET = "archive"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    server = LocalS3(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        store = S3Store(ArchiveConfig("s3", server.endpoint, BUCKET), server.credentials)
        store.client.create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.stop()


def archive_config(server: LocalS3, prefix: str | None = None) -> ArchiveConfig:
    """An [archive] for SERVER with a fresh key prefix (this test's own corner of the bucket)."""
    return ArchiveConfig("s3", server.endpoint, BUCKET, prefix if prefix is not None else f"t-{uuid.uuid4().hex[:10]}/")


@pytest.fixture
def store(seaweed: LocalS3) -> S3Store:
    """A store on the session's server under a prefix of this test's own."""
    return S3Store(archive_config(seaweed), seaweed.credentials, max_attempts=2)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """An archive key pair (secret, public) written by the crypt4gh package."""
    from tests.conftest import make_keypair

    return make_keypair(tmp_path, "archive")
