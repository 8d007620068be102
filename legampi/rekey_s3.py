"""Key rotation of an object in the S3 archive: a new object at the same key, switched over safely.

S3 cannot rewrite the first bytes of an object, so the rotated copy is a new object written through the
ingest writer (legampi.s3writer): the new header, then the payload bytes copied unchanged from one GET
of the old object (bounded memory: one part; no plaintext is ever written anywhere). The switch-over is
the S3 equivalent of the folder's os.replace, with one more guard:

- the old object is read once and checked against the recorded archive checksum AND the sha256 the
  server stored for it, before anything becomes visible;
- the new object becomes visible only by CompleteMultipartUpload (or PutObject) with
  `If-Match: <ETag of the object that was read>`: it replaces exactly the verified copy, never a copy
  that changed meanwhile (a concurrent rekey, an operator), and a reader sees the old or the new object,
  never a mixture;
- the new object's provenance metadata names what it was rotated from (`rekeyed_from`: the old archive
  checksum and key). That is the folder's pending marker, carried by the object itself: a run that
  crashed after the switch and before the database row was updated is recognised on the next run (the
  object names the new key, was rotated from the recorded checksum, and still matches the server's
  checksum) and recorded as `recovered` without writing it again; verify-archive reports it as a pending
  rotation meanwhile;
- the row keeps its archive_path (the key does not change); rekey_job records the new checksum, key and
  size as for the folder. An upload of a rotation that died before its switch is invisible; `recover`
  aborts it once no rekey job is alive.

With versioning or object lock on the bucket the old object stays as a noncurrent version, as the
site's retention policy wants; legampi never deletes versions.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

from legampi import storage
from legampi.formats import IngestError
from legampi.formats.crypt4gh import build_header, iter_segments, read_header
from legampi.rekey_common import CHUNK, RekeyError, preconditions
from legampi.s3read import open_archived
from legampi.s3writer import S3ArchiveWriter

_UPLOAD_FIELDS = ("job_id", "part_size", "archive_checksum", "archive_checksum_type", "rekeyed_from")


def rekey_object(task: Any, keys: Any, res: Any, store: Any = None) -> None:
    """Rotate the object at task.archive_path to the new key (RES filled in); RekeyError/IngestError when
    it cannot be, leaving the object and its row exactly as they were."""
    loc = task.archive_path
    algo = preconditions(task, keys, loc)
    store, rel = storage.store_at(loc, store)
    info = store.head(rel)
    if info is None:
        raise RekeyError(f"{loc}: no object at this key; run `legampi verify-archive`")
    if _resume(task, keys, store, rel, info, algo, res):
        return
    body, reader, hdr, info = open_archived(loc, keys.old_sk, f"the archive secret key ({keys.old_fp})", algo, store)
    writer: S3ArchiveWriter | None = None
    try:
        if not info.provenance:
            raise RekeyError(f"{loc}: no legampi provenance in the object's metadata; not rotated")
        new_header = build_header(hdr.packets, keys.new_pk)
        if keys.new_sk is not None:
            _check_header(new_header, keys, hdr.session_keys, loc)
        claim = _claim(info.provenance, task, keys)
        writer = S3ArchiveWriter(store, rel, claim, info.size, algo, replace_etag=info.etag)
        writer.write(new_header)
        _copy_payload(reader, writer, hdr.session_keys if keys.new_sk is not None else None, task, loc)
        new_hex = writer.finish()
        if reader.h.hexdigest() != task.archive_checksum:
            raise RekeyError(
                f"{loc}: {algo} {reader.h.hexdigest()} differs from the recorded {task.archive_checksum}; "
                "not rotated (run `legampi verify-archive`)"
            )
        if reader.server_checksum_ok(info) is not True:
            raise RekeyError(f"{loc}: the bytes read differ from the sha256 the server stored; not rotated")
        try:
            writer.commit(claim)
        except IngestError as exc:
            if exc.kind != "archive_conflict":
                raise
            raise RekeyError(f"{loc}: the object changed while it was being rotated; not replaced") from None
        res.result, res.new_checksum, res.archive_size, res.bytes_read = "rekeyed", new_hex, writer.size, reader.count
        res.details = (
            f"{loc}: header re-encrypted for key {keys.new_fp} (was {task.archive_key or keys.old_fp}), payload "
            f"unchanged, new object switched over with If-Match, {algo} {new_hex}"
            + (", decrypts with the new secret key" if keys.new_sk is not None else "")
        )
    finally:
        body.close()
        if writer is not None and not writer.committed:
            writer.abort()


def _claim(prov: dict[str, Any], task: Any, keys: Any) -> dict[str, Any]:
    """The rotated object's provenance: the old one's (file, name, checksums) for the new key, naming
    what it was rotated from."""
    claim = {k: v for k, v in prov.items() if k not in _UPLOAD_FIELDS}
    claim["archive_key"] = keys.new_fp
    claim["rekeyed_from"] = {"checksum": task.archive_checksum, "key": task.archive_key or keys.old_fp}
    for key in ("md5", "sha256"):
        if getattr(task, key):
            claim[key] = getattr(task, key)
    return claim


def _copy_payload(reader: Any, writer: S3ArchiveWriter, session_keys: list[bytes] | None, task: Any, loc: str) -> None:
    """The payload bytes, unchanged; with SESSION_KEYS (a new secret key was given) also decrypted in
    memory and compared with the recorded plaintext checksums before anything is switched over."""
    if session_keys is None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := reader.readinto(buf):
            writer.write(view[:n])
        return
    md5, sha = hashlib.md5(), hashlib.sha256()
    try:
        for cipher, plain in iter_segments(reader, session_keys, CHUNK, loc):
            md5.update(plain)
            sha.update(plain)
            writer.write(cipher)
    except IngestError as exc:
        raise RekeyError(f"{loc}: the payload does not decrypt: {exc.message}") from None
    if task.md5 and md5.hexdigest() != task.md5:
        raise RekeyError(f"{loc}: plaintext md5 {md5.hexdigest()} != recorded {task.md5}; not rotated")
    if task.sha256 and sha.hexdigest() != task.sha256:
        raise RekeyError(f"{loc}: plaintext sha256 {sha.hexdigest()} != recorded {task.sha256}; not rotated")


def _check_header(header: bytes, keys: Any, session_keys: list[bytes], loc: str) -> None:
    """The new header opens with the new secret key to the same session keys."""
    assert keys.new_sk is not None
    try:
        hdr = read_header(io.BytesIO(header), keys.new_sk, loc)
    except IngestError as exc:
        raise RekeyError(f"{loc}: the new header does not open with the new secret key ({exc.message})") from None
    if sorted(hdr.session_keys) != sorted(session_keys):
        raise RekeyError(f"{loc}: the new secret key opens other session keys than the old one")


def _resume(task: Any, keys: Any, store: Any, rel: str, info: Any, algo: str, res: Any) -> bool:
    """True when an interrupted run already switched the object over (recorded now in RES); False when
    the object is still the recorded copy (rotate it); RekeyError for anything else."""
    prov = info.provenance or {}
    if (prov.get("rekeyed_from") or {}).get("checksum") != task.archive_checksum:
        return False
    loc = task.archive_path
    if prov.get("archive_key") != keys.new_fp:
        raise RekeyError(
            f"{loc}: an interrupted run already rotated it to key {prov.get('archive_key')}, not {keys.new_fp}; "
            "rerun with that public key to record it"
        )
    got = store.hash_object(rel, algo, prov.get("part_size"))
    recorded = prov.get("archive_checksum")
    if got.server_checksum_ok is not True or (recorded and recorded != got.digest):
        raise RekeyError(f"{loc}: rotated by an interrupted run, but its bytes no longer match; left for an operator")
    res.result, res.new_checksum, res.archive_size, res.bytes_read = "recovered", got.digest, got.size, got.size
    res.details = f"{loc}: found rotated by an interrupted run ({algo} {got.digest}); recorded now"
    return True
