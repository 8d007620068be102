"""Streaming an archived file into S3 from the worker's single pass, with archive.TempArchiveFile's face.

`write()` hashes and buffers one part (bounded memory: one part, whatever the file size), uploading
each full part with its own `x-amz-checksum-sha256` so the server refuses any byte that changed on the
way; `finish()` uploads the last part and returns the whole object's digest; `commit(prov)` makes the
object visible with `If-None-Match: *` (never over an existing object); `abort()` drops the upload.

An object of at most one part takes the small-file path instead: one PutObject at commit, with the
full provenance record and the archive checksum in its metadata. A multipart upload must name its
metadata when it starts, before the plaintext checks: it carries the *claim* (file id, registered name
and checksums, archive key, job, part size). That is proof enough, because legampi completes the upload
only after the plaintext matched those registered checksums, and the server keeps the composite sha256
of the parts that legampi computed as it streamed (`s3store.examine` recomputes it).

Key rotation (legampi.rekey_s3) writes the rotated copy through the same writer with `replace_etag`:
the commit then replaces the object only while it is still the copy that was read (`If-Match: ETAG`)
instead of never replacing one (`If-None-Match: *`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from legampi.formats import IngestError
from legampi.s3store import S3Store, b64, composite, encode_provenance

LOG = logging.getLogger(__name__)
MiB = 1 << 20
MIN_PART = 5 * MiB  # S3's minimum for every part but the last
MAX_PART = 5 * 1024 * MiB
MAX_PARTS = 10_000
MAX_OBJECT = 5 * 1024 * 1024 * MiB  # 5 TiB, S3's largest object


def part_size_for(expected_size: int | None, minimum: int = MIN_PART) -> int:
    """The smallest whole-MiB part size (at least MINIMUM) that fits EXPECTED_SIZE, plus a margin for the
    Crypt4GH overhead and an estimate that was low, in 10,000 parts; unknown size: room for 5 TiB."""
    size = MAX_OBJECT if expected_size is None else max(0, expected_size)
    size += size // 256 + MiB
    need = -(-size // MAX_PARTS)
    need = -(-need // MiB) * MiB
    return min(MAX_PART, max(minimum, need))


class _ViewReader(io.RawIOBase):
    """A seekable file over a memoryview: botocore sends (and on a retry re-sends) the part buffer
    without copying it."""

    def __init__(self, view: memoryview) -> None:
        self.view, self.pos = view, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), len(self.view) - self.pos)
        memoryview(b)[:n] = self.view[self.pos : self.pos + n]
        self.pos += n
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: len(self.view)}[whence]
        self.pos = max(0, min(len(self.view), base + offset))
        return self.pos

    def tell(self) -> int:
        return self.pos

    def __len__(self) -> int:
        return len(self.view)


class S3ArchiveWriter:
    """An object being uploaded to REL's key; commit() makes it visible, never over an existing one."""

    def __init__(
        self,
        store: S3Store,
        rel: str,
        claim: dict[str, Any],
        expected_size: int | None = None,
        checksum: str = "sha256",
        job_id: str | None = None,
        part_size: int | None = None,
        concurrency: int = 0,
        replace_etag: str | None = None,
    ) -> None:
        self.store, self.rel, self.claim, self.job_id = store, rel, dict(claim), job_id
        # the commit's precondition: replace exactly this object (rekey), or never replace any
        self.condition = {"IfMatch": replace_etag} if replace_etag else {"IfNoneMatch": "*"}
        self.key = store.key(rel)
        self.location = store.location(rel)
        self.final = self.location  # what TempArchiveFile calls the final name
        self.part_size = part_size or part_size_for(expected_size)
        if not MIN_PART <= self.part_size <= MAX_PART:
            raise ValueError(f"part size {self.part_size} outside S3's limits ({MIN_PART}..{MAX_PART})")
        self.checksum_type = checksum
        self.hasher = hashlib.new(checksum)
        self.size = 0
        self.committed = False
        cap = self.part_size if expected_size is None else min(self.part_size, expected_size + 64 * 1024)
        self._buf = bytearray(min(cap, 64 * MiB))  # grows to the part size if the data needs it
        self._fill = 0
        self._part_hash = hashlib.sha256()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._digests: list[bytes] = []
        self._digest: str | None = None
        # concurrency N > 0: up to N full parts upload in threads while the next one fills (memory: N + 1
        # parts); 0: each part uploads inside write() (memory: one part)
        self.concurrency = concurrency
        self._pending: deque[tuple[Future[dict[str, Any]], bytearray]] = deque()
        self._free: list[bytearray] = []
        self._pool: ThreadPoolExecutor | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hash and buffer DATA; a full part is uploaded (with its sha256) before more is buffered."""
        if self._digest is not None or self.committed:
            raise ValueError("write to a finished S3 archive writer")
        view = memoryview(data).cast("B")
        self.hasher.update(view)
        self.size += len(view)
        while view:
            if self._fill == self.part_size:
                self._upload_part()
            take = min(len(view), self.part_size - self._fill)
            end = self._fill + take
            if end > len(self._buf):
                self._buf += bytes(min(self.part_size, max(end, 2 * len(self._buf))) - len(self._buf))
            self._buf[self._fill : end] = view[:take]
            self._part_hash.update(view[:take])
            self._fill = end
            view = view[take:]

    def finish(self) -> str:
        """Upload the last part of a multipart object (still invisible); the hex digest of all bytes."""
        if self._digest is None:
            if self._upload_id is not None:
                self._upload_part()
                self._drain(0)
                self._parts.sort(key=lambda p: p["PartNumber"])
                self._digests = [base64.b64decode(p["ChecksumSHA256"]) for p in self._parts]
            self._digest = self.hasher.hexdigest()
        return self._digest

    def commit(self, prov: dict[str, Any]) -> str:
        """Make the object visible with its provenance, never over an existing object; its location.

        PROV is provenance.record(...) of the verified plaintext: it must agree with the claim the
        upload was started with. A conflict is IngestError `archive_conflict` (the upload is aborted)."""
        if self._digest is None:
            raise ValueError("finish() the S3 archive writer before commit()")
        if self.committed:
            raise ValueError("S3 archive writer already committed")
        self._check(prov)
        if self._upload_id is None:
            self._put(prov)
        else:
            self._complete()
        self.committed = True
        self._buf = bytearray()
        return self.location

    def abort(self) -> None:
        """Drop the incomplete upload (idempotent); never touches a visible object. If the server cannot
        be reached the upload stays, invisible, until `recover` aborts it."""
        self._buf = bytearray()
        self._free.clear()
        for future, _ in self._pending:  # parts in flight end first (an abort must not race them)
            try:
                future.result()
            except IngestError:
                continue  # a failed part: the upload is aborted below anyway
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None or self.committed:
            return
        try:
            self.store.client.abort_multipart_upload(Bucket=self.store.bucket, Key=self.key, UploadId=upload_id)
        except Exception as exc:  # noqa: BLE001 - best effort: recovery aborts what is left
            err = self.store.error(self.rel, "aborting the upload", exc)
            LOG.warning("%s; recovery will abort upload %s", err.message, upload_id)

    # ------------------------------------------------------------------ internals
    def _claim_meta(self) -> dict[str, str]:
        return encode_provenance({**self.claim, "job_id": self.job_id, "part_size": self.part_size})

    def _initiate(self) -> None:
        try:
            r = self.store.client.create_multipart_upload(
                Bucket=self.store.bucket, Key=self.key, ChecksumAlgorithm="SHA256", Metadata=self._claim_meta()
            )
        except Exception as exc:  # noqa: BLE001
            raise self.store.error(self.rel, f"starting the upload to {self.location}", exc) from None
        self._upload_id = r["UploadId"]

    def _upload_part(self) -> None:
        """Send the filled buffer as the next part: here, or in a thread with a fresh buffer to fill."""
        if self._upload_id is None:
            self._initiate()
        n = len(self._parts) + len(self._pending) + 1
        if n > MAX_PARTS:
            raise IngestError("io", f"{self.rel}: the archived object outgrew {MAX_PARTS} parts of {self.part_size}")
        digest, buf, fill = self._part_hash.digest(), self._buf, self._fill
        self._fill, self._part_hash = 0, hashlib.sha256()
        if not self.concurrency:
            self._parts.append(self._send_part(n, buf, fill, digest))
            return
        self._drain(self.concurrency - 1)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="legampi-s3-part")
        self._pending.append((self._pool.submit(self._send_part, n, buf, fill, digest), buf))
        self._buf = self._free.pop() if self._free else bytearray(self.part_size)

    def _drain(self, keep: int) -> None:
        """Wait for uploads in flight until at most KEEP remain; their buffers are reused."""
        while len(self._pending) > keep:
            future, buf = self._pending.popleft()
            self._free.append(buf)
            self._parts.append(future.result())  # re-raises the part's IngestError

    def _send_part(self, n: int, buf: bytearray, fill: int, digest: bytes) -> dict[str, Any]:
        body = _ViewReader(memoryview(buf)[:fill])
        try:
            r = self.store.client.upload_part(
                Bucket=self.store.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                PartNumber=n,
                Body=body,
                ContentLength=fill,
                ChecksumSHA256=b64(digest),
            )
        except Exception as exc:  # noqa: BLE001
            raise self.store.error(self.rel, f"uploading part {n} to {self.location}", exc) from None
        finally:
            body.view.release()
        if r.get("ChecksumSHA256") != b64(digest):
            raise IngestError(
                "io",
                f"{self.rel}: the S3 server did not confirm part {n}'s sha256 (does it support "
                "x-amz-checksum-sha256?); nothing was made visible",
            )
        return {"PartNumber": n, "ETag": r["ETag"], "ChecksumSHA256": b64(digest)}

    def _put(self, prov: dict[str, Any]) -> None:
        record = {**prov, "job_id": self.job_id, "archive_checksum": self._digest}
        record["archive_checksum_type"] = self.checksum_type
        expected = b64(self._part_hash.digest())
        body = _ViewReader(memoryview(self._buf)[: self._fill])
        try:
            r = self.store.client.put_object(
                Bucket=self.store.bucket,
                Key=self.key,
                Body=body,
                ContentLength=self._fill,
                ChecksumSHA256=expected,
                Metadata=encode_provenance(record),
                **self.condition,
            )
        except Exception as exc:  # noqa: BLE001
            self._raise_unless_ours(exc, expected, "storing the object")
            return
        finally:
            body.view.release()
        self._confirm(r.get("ChecksumSHA256"), expected)

    def _complete(self) -> None:
        expected = composite(self._digests)
        try:
            r = self.store.client.complete_multipart_upload(
                Bucket=self.store.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
                **self.condition,
            )
        except Exception as exc:  # noqa: BLE001
            try:
                self._raise_unless_ours(exc, expected, "completing the upload")
            except IngestError as err:
                if err.kind == "archive_conflict":
                    self.abort()
                raise
            return
        self._confirm(r.get("ChecksumSHA256"), expected)

    def _raise_unless_ours(self, exc: Exception, expected: str, stage: str) -> None:
        """A refused or lost answer may hide our own success (a retry after a lost response meets the
        object it created: 412, or NoSuchUpload): the object is ours if it has our claim and checksum."""
        err = self.store.error(self.rel, f"{stage} at {self.location}", exc)
        if err.kind in ("archive_conflict", "io"):
            try:
                info = self.store.head(self.rel)
            except IngestError:
                info = None
            prov = info.provenance if info else None
            if info and prov and prov.get("file_id") == self.claim["file_id"] and info.checksum_sha256 == expected:
                self._upload_id = None
                return
        raise err

    def _confirm(self, got: str | None, expected: str) -> None:
        if got != expected:
            raise IngestError(
                "io", f"{self.rel}: the S3 server recorded checksum {got} for {self.location}, legampi sent {expected}"
            )

    def _check(self, prov: dict[str, Any]) -> None:
        for key in ("file_id", "file_name", "dataset_id", "archive_key", "md5", "sha256"):
            if self.claim.get(key) is not None and prov.get(key) != self.claim[key]:
                raise ValueError(f"{self.rel}: provenance {key} {prov.get(key)!r} differs from the upload's claim")
