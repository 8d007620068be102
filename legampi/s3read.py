"""Reading archived objects back from S3 in one pass: verify-archive, export and rekey.

One GET per object, hashed as it streams past three ways at once: the recorded archive checksum's
algorithm, the whole object's sha256, and the server's own form of its sha256 (a composite of the part
digests for a multipart object), so a single read both checks legampi's record and proves the bytes are
still the ones the server verified when it accepted them. Crypt4GH decryption, when asked for, reads
through the same reader, so `--decrypt` costs no second read either.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

from legampi import storage
from legampi.formats import IngestError
from legampi.formats.crypt4gh import Header, read_header
from legampi.s3store import ObjectInfo, _PartHasher

REST = 4 << 20


class ObjectReader(io.RawIOBase):
    """A streaming body read through the hashes (`h`: the recorded algorithm's, as HashingReader)."""

    def __init__(self, body: Any, algo: str, part_size: int | None, composite: bool) -> None:
        self.body, self.h, self.whole = body, hashlib.new(algo), hashlib.sha256()
        self.parts = _PartHasher(part_size if composite else None)
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self.body.readinto(b) or 0
        if n:
            view = memoryview(b)[:n]
            self.h.update(view)
            self.whole.update(view)
            self.parts.update(view)
            self.count += n
        return n

    def drain(self) -> None:
        """Read (and hash) whatever the caller did not."""
        buf = bytearray(REST)
        while self.readinto(buf):
            pass

    def server_checksum_ok(self, info: ObjectInfo) -> bool | None:
        """Do the bytes read match the sha256 the server stored? None when it stored none."""
        if not info.checksum_sha256:
            return None
        return info.checksum_sha256 == self.parts.checksum(self.whole)


def open_object(location: str, algo: str, store: Any = None) -> tuple[Any, str, ObjectInfo, ObjectReader]:
    """(store, archive name, HEAD, reader) of the object at LOCATION; IngestError `io` when absent."""
    store, rel = storage.store_at(location, store)
    info = store.head(rel)
    if info is None:
        raise IngestError("io", f"{location}: no object at this key")
    server = info.checksum_sha256 or ""
    part_size = (info.provenance or {}).get("part_size")
    return store, rel, info, ObjectReader(store.open_read(rel), algo, part_size, "-" in server)


def open_archived(
    location: str, secret_key: bytes, key_name: str, algo: str, store: Any = None
) -> tuple[Any, ObjectReader, Header, ObjectInfo]:
    """checksum.open_archived for an S3 object: (body to close, hashing reader, opened header, HEAD)."""
    store, rel, info, reader = open_object(location, algo, store)
    try:
        try:
            hdr = read_header(reader, secret_key, location)
        except IngestError as exc:
            if exc.kind == "key":
                raise IngestError("key", f"{location}: no header packet opens with {key_name}") from None
            raise
    except BaseException:
        reader.body.close()
        raise
    return reader.body, reader, hdr, info


def audit_object(task: Any, secret_key: bytes | None, store: Any = None) -> tuple[str, str, int]:
    """verify's audit of one S3 object: (result, details, bytes read), result 'ok' | 'mismatch' | 'missing'."""
    loc, algo = task.archive_path, task.archive_checksum_type or "sha256"
    try:
        store, rel, info, reader = open_object(loc, algo, store)
    except IngestError as exc:
        return ("missing" if "no object" in exc.message else "mismatch"), exc.message, 0
    problems: list[str] = []
    try:
        if secret_key is not None:
            problems += _decrypt_check(reader, secret_key, task, loc)
        reader.drain()
    except IngestError as exc:
        problems.append(exc.message)
    except Exception as exc:  # noqa: BLE001 - a broken connection mid-read, as the operator's message
        problems.append(store.error(rel, "reading the archived object", exc).message)
    finally:
        reader.body.close()
    found = reader.h.hexdigest()
    if not problems:
        problems += _record_problems(task, info, reader, found, algo)
    if problems:
        return "mismatch", f"{loc}: " + "; ".join(problems), reader.count
    plain = ", plaintext checksums match" if secret_key is not None else ""
    return "ok", f"{loc}: {algo} {found}, server sha256 matches{plain}", reader.count


def _decrypt_check(reader: ObjectReader, secret_key: bytes, task: Any, loc: str) -> list[str]:
    from legampi.formats.crypt4gh import decrypt_stream

    md5, sha = hashlib.md5(), hashlib.sha256()
    try:
        for plain in decrypt_stream(reader, secret_key, label=loc):
            md5.update(plain)
            sha.update(plain)
    except IngestError as exc:
        return [f"does not decrypt with the archive key ({exc.kind}: {exc.message})"]
    out = []
    if task.md5 and md5.hexdigest() != task.md5:
        out.append(f"plaintext md5 {md5.hexdigest()} != manifest {task.md5}")
    if task.sha256 and sha.hexdigest() != task.sha256:
        out.append(f"plaintext sha256 {sha.hexdigest()} != recorded {task.sha256}")
    return out


def _record_problems(task: Any, info: ObjectInfo, reader: ObjectReader, found: str, algo: str) -> list[str]:
    """The recorded checksum, the server's checksum and the provenance metadata (the sidecar's role)."""
    out = []
    prov = info.provenance
    pending = (prov or {}).get("rekeyed_from") or {}
    if task.archive_checksum and found != task.archive_checksum:
        if pending.get("checksum") == task.archive_checksum:
            out.append(f"a key rotation is pending (to key {(prov or {}).get('archive_key')}): rerun `legampi rekey`")
        else:
            out.append(f"archive {algo} {found} != recorded {task.archive_checksum}")
    ok = reader.server_checksum_ok(info)
    if ok is None:
        out.append("the server holds no sha256 checksum for the object")
    elif not ok:
        out.append(f"the bytes differ from the sha256 the server stored ({info.checksum_sha256})")
    if prov is None:
        out.append("no legampi provenance in the object's metadata")
    elif prov.get("file_id") != task.file_id:
        out.append(f"the object's provenance names file {prov.get('file_id')!r}, not {task.file_id!r}")
    elif (
        prov.get("archive_checksum") and prov.get("archive_checksum_type") == algo and prov["archive_checksum"] != found
    ):
        out.append(f"the object's provenance records {algo} {prov['archive_checksum']}, the bytes are {found}")
    return out
