"""The S3 archive: one bucket (and key prefix) holding `<prefix><archive name>` objects.

The promises of the folder backend, in S3 terms: an object becomes visible only complete (PutObject,
or CompleteMultipartUpload), never over an existing one (`If-None-Match: *`, 412 otherwise), with
every byte checked by the server (`x-amz-checksum-sha256` per part); it carries its provenance in its
metadata (`x-amz-meta-legampi-provenance`, see `encode_provenance`), so recovery adopts an object
without a database row only with proof (`examine`). Incomplete multipart uploads are invisible but
kept (and billed) until aborted: `list_uploads` + `select_orphans` + `abort_upload` are for `recover`.

The writer is in `legampi.s3writer`. boto3 is imported only when a store is made: commands that never
touch S3 do not pay its import time.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from legampi.formats import IngestError
from legampi.provenance import Verdict, checksums_mismatch
from legampi.redact import redact
from legampi.s3config import ArchiveConfig, Credentials, resolve_credentials

LOG = logging.getLogger(__name__)
META_KEY = "legampi-provenance"  # -> x-amz-meta-legampi-provenance
META_BUDGET = 1800  # AWS allows 2 KB of user metadata (names and values); leave room for the name
ARCHIVE_SUFFIX = ".c4gh"  # only keys ending so are legampi's (uploads of other tools are left alone)
READ_CHUNK = 1 << 20
_CREDENTIAL_CODES = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied", "InvalidToken", "403"}
_CHECKSUM_CODES = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "InvalidRequest"}
# Ceph RGW (CSC Allas) answers a full quota with 403 QuotaExceeded, MinIO with 400 XMinioAdminBucketQuotaExceeded
_SPACE_CODES = {"QuotaExceeded", "XMinioAdminBucketQuotaExceeded", "EntityTooLarge", "InsufficientStorage", "507"}


@dataclass(frozen=True)
class ObjectInfo:
    """What HEAD says about an archived object."""

    size: int
    provenance: dict[str, Any] | None  # legampi's record, None on a foreign object
    checksum_sha256: str | None  # the server's: base64 (whole object) or "base64-N" (N parts)
    etag: str


@dataclass(frozen=True)
class Upload:
    """An incomplete multipart upload (invisible, but stored until completed or aborted)."""

    key: str
    upload_id: str
    initiated: datetime
    rel: str | None  # the archive name it would create, None outside legampi's prefix and suffix


@dataclass(frozen=True)
class ObjectDigest:
    """One full read of an object: its digest and whether it still matches the server's checksum."""

    size: int
    digest: str  # hex, in the algorithm asked for
    sha256: str  # hex sha256 of the whole object
    server_checksum_ok: bool | None  # None: the server holds no sha256 checksum to compare with


def encode_provenance(record: dict[str, Any]) -> dict[str, str]:
    """User metadata for RECORD: one ASCII JSON value (headers are ASCII); a file name too long for
    the 2 KB metadata budget is stored as its sha256 (`file_name_sha256`), which proves as much."""
    rec = dict(record)
    text = json.dumps(rec, ensure_ascii=True, separators=(",", ":"), sort_keys=True)
    if len(text) > META_BUDGET and rec.get("file_name") is not None:
        rec["file_name_sha256"] = hashlib.sha256(rec.pop("file_name").encode("utf-8")).hexdigest()
        text = json.dumps(rec, ensure_ascii=True, separators=(",", ":"), sort_keys=True)
    if len(text) > META_BUDGET:
        raise ValueError(f"provenance record of {len(text)} bytes exceeds the S3 metadata budget")
    return {META_KEY: text}


def decode_provenance(metadata: dict[str, str] | None) -> dict[str, Any] | None:
    """legampi's record from an object's user metadata; None when absent or not legampi's."""
    raw = (metadata or {}).get(META_KEY)
    if not raw:
        return None
    try:
        rec = json.loads(raw)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("file_id"), str) else None


def s3_error(rel: str, stage: str, exc: BaseException, secrets: list[str] | None = None) -> IngestError:
    """An S3/botocore failure as an IngestError of the kind the operator acts on; never shows a secret.

    Quota or space -> `nospace` (checked before 403: Ceph's quota answer is a 403); credentials refused
    -> `config` (the job stops, files are released unchanged); a checksum refused -> `io` (the bytes
    changed in transit: retry); a precondition -> `archive_conflict`; a server failure (5xx) -> `io`.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        text = redact(f"{code}: {err.get('Message', '')}".strip(": "), secrets or [])
        if status == 412 or code == "PreconditionFailed":
            return IngestError(
                "archive_conflict",
                f"{rel}: {stage}: an object already exists at the archive key; not overwritten, the source is kept",
            )
        if code in _SPACE_CODES or status == 507:
            return IngestError("nospace", f"{rel}: {stage}: the S3 bucket is over its quota or out of space ({text})")
        if code in _CREDENTIAL_CODES or status == 403:
            return IngestError("config", f"{rel}: {stage}: the S3 server refused the credentials or access ({text})")
        if code in ("NoSuchBucket",):
            return IngestError("config", f"{rel}: {stage}: the S3 bucket does not exist ({text})")
        if code in _CHECKSUM_CODES:
            return IngestError("io", f"{rel}: {stage}: the S3 server refused the data's checksum ({text})")
        if isinstance(status, int) and status >= 500:  # SeaweedFS 4.48 refuses writes over quota so (a 500)
            why = "its log says why: a bucket over its quota, a full disk, a failed disk"
            return IngestError("io", f"{rel}: {stage}: the S3 server failed the request (HTTP {status} {text}); {why}")
        return IngestError("io", f"{rel}: {stage}: S3 error HTTP {status} {text}")
    if isinstance(exc, BotoCoreError):
        return IngestError("io", f"{rel}: {stage}: {redact(str(exc), secrets or [])}")
    if isinstance(exc, OSError):
        return IngestError("io", f"{rel}: {stage}: {exc.strerror or exc}")
    raise exc


def _status(exc: BaseException) -> int | None:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


class S3Store:
    """A bucket and key prefix, and a boto3 client for them (one per process: clients are not shared
    across forks; boto3 clients are thread-safe, so the overlapped finish thread may use it)."""

    def __init__(
        self,
        cfg: ArchiveConfig,
        credentials: Credentials | None = None,
        *,
        connect_timeout: float = 10,
        read_timeout: float = 120,
        max_attempts: int = 3,
    ) -> None:
        import boto3
        from botocore.config import Config

        if cfg.backend != "s3" or not cfg.s3_bucket:
            raise ValueError("S3Store needs an [archive] with backend = s3")
        self.cfg = cfg
        self.bucket = cfg.s3_bucket
        self.prefix = cfg.s3_prefix
        self.credentials = credentials or resolve_credentials()
        bc = Config(
            region_name=cfg.s3_region,
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            # legampi sends its own x-amz-checksum-sha256: no CRC32 computed by botocore on top of it
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=cfg.s3_endpoint,
            aws_access_key_id=self.credentials.access_key,
            aws_secret_access_key=self.credentials.secret_key,
            aws_session_token=self.credentials.session_token,
            config=bc,
        )

    def __repr__(self) -> str:
        return f"S3Store({self.cfg.s3_endpoint}, s3://{self.bucket}/{self.prefix})"

    def key(self, rel: str) -> str:
        """The object key of archive name REL (the folder backend's relative path) under the prefix."""
        return self.prefix + rel

    def rel_of(self, key: str) -> str | None:
        """The archive name of KEY, or None when the key is not under legampi's prefix."""
        return key[len(self.prefix) :] if key.startswith(self.prefix) and len(key) > len(self.prefix) else None

    def location(self, rel: str) -> str:
        """`s3://bucket/key`: what the database, status and report show as the archive path."""
        return f"s3://{self.bucket}/{self.key(rel)}"

    def error(self, rel: str, stage: str, exc: BaseException) -> IngestError:
        err = s3_error(rel, stage, exc, self.credentials.secrets())
        if err.kind == "config" and "credentials" in err.message:  # say which, never the secret
            c = self.credentials
            err = IngestError("config", f"{err.message}; access key {c.access_key} from {c.source or 'the caller'}")
        return err

    def key_problem(self, rel: str) -> str | None:
        """Why archive name REL cannot be an object key here (S3 keys are at most 1024 bytes), or None:
        for `register`'s name checks, next to namelimits.name_limits_problem."""
        n = len(self.key(rel).encode("utf-8"))
        return None if n <= 1024 else f"{rel!r}: the S3 key would be {n} bytes, S3 allows 1024"

    def check(self) -> None:
        """Preflight: the endpoint answers, the credentials are accepted, the bucket exists."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:  # noqa: BLE001 - mapped (or re-raised) by s3_error
            raise self.error(f"s3://{self.bucket}", f"checking the bucket at {self.cfg.s3_endpoint}", exc) from None

    def head(self, rel: str) -> ObjectInfo | None:
        """The object at REL's key, or None if there is none."""
        try:
            r = self.client.head_object(Bucket=self.bucket, Key=self.key(rel), ChecksumMode="ENABLED")
        except Exception as exc:  # noqa: BLE001
            if _status(exc) == 404:
                return None
            raise self.error(rel, "reading the archived object's metadata", exc) from None
        return ObjectInfo(
            r["ContentLength"], decode_provenance(r.get("Metadata")), r.get("ChecksumSHA256"), r.get("ETag", "")
        )

    def exists(self, rel: str) -> bool:
        return self.head(rel) is not None

    def open_read(self, rel: str, start: int = 0) -> Any:
        """A streaming body (read(n), close()) of the object from byte START: for verify, rekey, export."""
        args = {"Bucket": self.bucket, "Key": self.key(rel)}
        if start:
            args["Range"] = f"bytes={start}-"
        try:
            return self.client.get_object(**args)["Body"]
        except Exception as exc:  # noqa: BLE001
            raise self.error(rel, "reading the archived object", exc) from None

    def read_range(self, rel: str, start: int, length: int) -> bytes:
        """LENGTH bytes from START (a Crypt4GH header, without fetching the body)."""
        args = {"Bucket": self.bucket, "Key": self.key(rel), "Range": f"bytes={start}-{start + length - 1}"}
        try:
            return self.client.get_object(**args)["Body"].read()
        except Exception as exc:  # noqa: BLE001
            raise self.error(rel, "reading the archived object", exc) from None

    def iter_objects(self) -> Iterator[tuple[str, int]]:
        """(archive name, size) of every object under the prefix: verify-archive's unexpected files."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                rel = self.rel_of(obj["Key"])
                if rel is not None:
                    yield rel, obj["Size"]

    def list_uploads(self) -> list[Upload]:
        """Every incomplete multipart upload under the prefix (paginated)."""
        out = []
        pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for u in page.get("Uploads", []):
                rel = self.rel_of(u["Key"])
                rel = rel if rel is not None and rel.endswith(ARCHIVE_SUFFIX) else None
                out.append(Upload(u["Key"], u["UploadId"], u["Initiated"], rel))
        return out

    def abort_upload(self, upload: Upload) -> bool:
        """Abort an incomplete upload (its parts are freed); False if the server says it was already gone
        (AWS answers 404 NoSuchUpload; SeaweedFS answers success): either way it is gone."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload.key, UploadId=upload.upload_id)
        except Exception as exc:  # noqa: BLE001
            if _status(exc) == 404:
                return False
            raise self.error(upload.rel or upload.key, "aborting an incomplete upload", exc) from None
        return True

    def hash_object(self, rel: str, algo: str = "sha256", part_size: int | None = None) -> ObjectDigest:
        """Read the whole object once: its ALGO digest, its sha256, and a comparison with the checksum
        the server stored (composite "-N" checksums are recomputed part by part with PART_SIZE)."""
        info = self.head(rel)
        if info is None:
            raise IngestError("io", f"{rel}: no object at {self.location(rel)}")
        server = info.checksum_sha256
        if part_size is None and info.provenance:
            part_size = info.provenance.get("part_size")
        h, whole = hashlib.new(algo), hashlib.sha256()
        parts = _PartHasher(part_size if server and "-" in server else None)
        body = self.open_read(rel)
        size = 0
        try:
            while chunk := body.read(READ_CHUNK):
                h.update(chunk)
                whole.update(chunk)
                parts.update(chunk)
                size += len(chunk)
        except Exception as exc:  # noqa: BLE001
            raise self.error(rel, "reading the archived object", exc) from None
        finally:
            body.close()
        ok = None if not server else server == parts.checksum(whole)
        return ObjectDigest(size, h.hexdigest(), whole.hexdigest(), ok)


class _PartHasher:
    """sha256 per part of PART_SIZE bytes, for S3's composite checksum b64(sha256(d1 || ... || dN))-N."""

    def __init__(self, part_size: int | None) -> None:
        self.part_size, self.cur, self.fill = part_size, hashlib.sha256(), 0
        self.done: list[bytes] = []

    def update(self, data: bytes | memoryview) -> None:
        if not self.part_size:
            return
        view = memoryview(data)
        while view:
            take = min(len(view), self.part_size - self.fill)
            self.cur.update(view[:take])
            self.fill += take
            view = view[take:]
            if self.fill == self.part_size:
                self.done.append(self.cur.digest())
                self.cur, self.fill = hashlib.sha256(), 0

    def checksum(self, whole: Any) -> str:
        """The server's form: composite when parts were hashed, else the whole object's base64 sha256."""
        if not self.part_size:
            return b64(whole.digest())
        digests = self.done + ([self.cur.digest()] if self.fill else [])
        return composite(digests)


def b64(digest: bytes) -> str:
    import base64

    return base64.b64encode(digest).decode("ascii")


def composite(part_digests: list[bytes]) -> str:
    """S3's checksum of a multipart object from its parts' sha256 digests."""
    return f"{b64(hashlib.sha256(b''.join(part_digests)).digest())}-{len(part_digests)}"


def select_orphans(
    uploads: list[Upload], live_rels: set[str], initiated_before: datetime | None = None
) -> list[Upload]:
    """The uploads `recover` aborts: legampi's (prefix and `.c4gh`), not for a file claimed by a live job.

    List the uploads BEFORE reading the live claims: an upload is initiated only after its file was
    claimed, so a listed upload of a live job always finds its claim. INITIATED_BEFORE (e.g. the
    recovery's start minus a margin) spares uploads that started during recovery on any account."""
    return [
        u
        for u in uploads
        if u.rel is not None and u.rel not in live_rels and (initiated_before is None or u.initiated < initiated_before)
    ]


def examine(store: S3Store, rel: str, row: dict[str, Any], algo: str = "sha256") -> Verdict:
    """Is the object at REL the copy legampi archived for ROW (file_id, file_name, md5, sha256)?

    Proof: legampi's provenance names the row and its registered checksums, and the bytes still hash
    to the checksum the server verified when they were stored (and, for a single-part object, to the
    archive checksum recorded in the provenance). Reads the whole object: only crash leftovers pay."""
    info = store.head(rel)
    if info is None:
        return Verdict(False, f"{store.location(rel)}: no object")
    why = _mismatch(info.provenance, row)
    if why:
        return Verdict(False, f"{store.location(rel)}: {why}")
    prov = info.provenance or {}
    got = store.hash_object(rel, algo, prov.get("part_size"))
    if got.server_checksum_ok is not True:
        what = "holds no sha256 checksum" if got.server_checksum_ok is None else "stored a different checksum"
        return Verdict(False, f"{store.location(rel)}: the server {what} for these bytes")
    recorded = prov.get("archive_checksum")
    if recorded and prov.get("archive_checksum_type") == algo and recorded != got.digest:
        return Verdict(False, f"{store.location(rel)}: the object hashes to {algo} {got.digest}, recorded {recorded}")
    return Verdict(True, "", got.digest, algo, prov)


def _mismatch(prov: dict[str, Any] | None, row: dict[str, Any]) -> str:
    if prov is None:
        return "no legampi provenance in its metadata (not archived by legampi)"
    if prov.get("file_id") != row["file_id"]:
        return f"archived for file {prov.get('file_id')!r}, not {row['file_id']!r}"
    if "file_name" in prov:
        if prov["file_name"] != row["file_name"]:
            return f"archived from {prov['file_name']!r}, not {row['file_name']!r}"
    elif prov.get("file_name_sha256") != hashlib.sha256(row["file_name"].encode("utf-8")).hexdigest():
        return f"archived from another file name than {row['file_name']!r}"
    return checksums_mismatch(prov, row)
