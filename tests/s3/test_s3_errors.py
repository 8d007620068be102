"""How S3 answers become failure kinds, for the answers the pinned SeaweedFS cannot give (no server).

A full quota is `nospace` whatever the status the server puts on it: Ceph RGW (CSC Allas) answers
403 QuotaExceeded, which must not pass for refused credentials (`config` stops the job). SeaweedFS
4.48 answers a write into a bucket over its quota with 500 InternalError: that is `io`, and its
real-server test is tests/s3/test_s3_faults.py.
"""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from legampi.s3store import s3_error


def _answer(status: int, code: str, message: str = "") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject"
    )


@pytest.mark.parametrize(
    ("status", "code", "kind", "says"),
    [
        (403, "QuotaExceeded", "nospace", "over its quota or out of space"),  # Ceph RGW, CSC Allas
        (400, "XMinioAdminBucketQuotaExceeded", "nospace", "over its quota"),  # MinIO
        (507, "InsufficientStorage", "nospace", "out of space"),
        (403, "AccessDenied", "config", "refused the credentials or access"),
        (403, "SignatureDoesNotMatch", "config", "refused the credentials"),
        (404, "NoSuchBucket", "config", "bucket does not exist"),
        (412, "PreconditionFailed", "archive_conflict", "not overwritten, the source is kept"),
        (400, "BadDigest", "io", "refused the data's checksum"),
        (500, "InternalError", "io", "the S3 server failed the request (HTTP 500 InternalError"),
        (503, "SlowDown", "io", "its log says why"),
    ],
)
def test_answers_map_to_the_kind_the_operator_acts_on(status: int, code: str, kind: str, says: str) -> None:
    err = s3_error("d/f.c4gh", "storing the object at s3://b/d/f.c4gh", _answer(status, code, "server text"))
    assert err.kind == kind and says in err.message, err.message
    assert err.message.startswith("d/f.c4gh: storing the object at s3://b/d/f.c4gh: ")


def test_a_secret_in_the_server_text_is_never_shown() -> None:
    secret = "s3cr3t-Value-0123456789"
    err = s3_error("f.c4gh", "checking", _answer(403, "SignatureDoesNotMatch", f"signed with {secret}"), [secret])
    assert secret not in err.message and err.kind == "config"
