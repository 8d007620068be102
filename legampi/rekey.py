"""Archive key rotation (`legampi rekey`) of one archived file by header re-encryption.

A Crypt4GH file's header holds its session keys encrypted for one reader's public key; the payload is
encrypted with the session keys. Moving a file to the next archive key therefore rewrites only the header
(`formats.crypt4gh.build_header`, shared with `process` and `export`) and copies the payload bytes
unchanged: no plaintext is ever written, and the work per file is one read plus one write.

Rotation replaces the recorded archive copy in place, so its crash windows are closed with a small
pending marker ``<file>.rekey`` (JSON: old and new checksum and key), written durably *before* the
rename. A rerun that finds a marker tells a finished-but-unrecorded rotation (the file hashes to the
marker's new checksum) from one that never replaced the file (it still hashes to the recorded checksum);
the marker is removed only after the database row points at the new copy (by `rekey_job`, which lists,
records and reports the run; this module never touches the database).

An object in an S3 archive (`archive_path` s3://...) cannot have its header rewritten in place; it is
rotated by legampi.rekey_s3 (a new object at the same key, replacing only the copy that was read).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import archive, checksum, storage
from .formats import IngestError, read_exact_into
from .formats.crypt4gh import build_header, iter_segments, read_header
from .keys import fingerprint, load_public_key, load_secret_key, public_from_secret
from .rekey_common import CHUNK, RekeyError, preconditions

NEW_PASSPHRASE_ENV = "LEGAMPI_NEW_ARCHIVE_PASSPHRASE"


@dataclass
class RekeyTask:
    file_id: str
    dataset_id: str
    archive_path: str
    archive_checksum: str | None
    archive_checksum_type: str | None
    archive_key: str | None
    md5: str | None
    sha256: str | None
    size: int = 0


@dataclass
class RekeyResult:
    file_id: str
    dataset_id: str
    archive_path: str
    result: str  # 'rekeyed' | 'recovered' (rotated by an interrupted run) | 'failed'
    details: str
    old_checksum: str | None = None
    new_checksum: str | None = None
    old_key: str | None = None
    new_key: str | None = None
    archive_size: int | None = None
    bytes_read: int = 0
    seconds: float = 0.0
    rank: int = 0


@dataclass
class RekeyKeys:
    """What a worker needs; built on each rank from files, never sent over MPI."""

    old_sk: bytes = field(repr=False)
    new_pk: bytes
    new_sk: bytes | None = field(default=None, repr=False)
    file_mode: int = 0o640

    @functools.cached_property
    def old_fp(self) -> str:
        return fingerprint(public_from_secret(self.old_sk))

    @functools.cached_property
    def new_fp(self) -> str:
        return fingerprint(self.new_pk)


def load_rekey_keys(
    cfg: Any,
    new_public_key: str | os.PathLike,
    new_secret_key: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
) -> RekeyKeys:
    """Old archive secret key from the config, the new key pair from the command line (checked to match)."""
    env = dict(os.environ if env is None else env)
    if cfg.crypto.archive_secret_key is None:
        raise RekeyError("rekey needs [crypto] archive_secret_key (the current archive key) to open the headers")
    pw = cfg.crypto.archive_passphrase.reveal() if cfg.crypto.archive_passphrase else None
    keys = RekeyKeys(
        load_secret_key(cfg.crypto.archive_secret_key, pw),
        load_public_key(new_public_key),
        file_mode=cfg.crypto.file_mode,
    )
    if keys.new_fp == keys.old_fp:
        raise RekeyError(
            f"the new public key {new_public_key} belongs to the configured archive secret key "
            f"{cfg.crypto.archive_secret_key}: nothing to rotate"
        )
    if new_secret_key is not None:
        keys.new_sk = load_secret_key(new_secret_key, env.get(NEW_PASSPHRASE_ENV) or None)
        if public_from_secret(keys.new_sk) != keys.new_pk:
            raise RekeyError(f"{new_secret_key} is not the secret key of {new_public_key}")
    return keys


def pending_path(path: Path) -> Path:
    """The marker that says `path` may already have been replaced by its rotated copy."""
    return path.with_name(path.name + archive.PENDING_SUFFIX)


def clear_pending(archive_path: str) -> None:
    """Drop the pending marker of a rotation now recorded (folder archive; an S3 object needs none: its
    own metadata says what it was rotated from, see rekey_s3)."""
    if storage.is_s3(archive_path):
        return
    marker = pending_path(Path(archive_path))
    marker.unlink(missing_ok=True)
    archive.fsync_dir(marker.parent)


def _write_json_durably(path: Path, obj: dict[str, Any], mode: int) -> None:
    archive.write_durably(path, json.dumps(obj, sort_keys=True).encode("utf-8"), mode)


def read_pending(path: Path) -> dict[str, Any]:
    """A pending marker's content, or a RekeyError naming the file if it is not one of ours."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RekeyError(f"{path}: unreadable rekey marker ({exc}); inspect it and remove it by hand") from None
    if not isinstance(obj, dict) or not {"algo", "old_checksum", "new_checksum", "new_key"} <= set(obj):
        raise RekeyError(f"{path}: not a legampi rekey marker; inspect it and remove it by hand")
    return obj


def _sidecar_ok(path: Path, algo: str, digest: str) -> bool:
    try:
        return checksum.read_sidecar(checksum.sidecar_path(path, algo), algo)[0] == digest
    except (OSError, ValueError):
        return False


def _write_sidecar(path: Path, digest: str, algo: str, new_fp: str, mode: int) -> None:
    """The rotated copy's sidecar, keeping its provenance (now naming the new archive key)."""
    try:
        prov = checksum.read_sidecar(checksum.sidecar_path(path, algo), algo)[2]
    except (OSError, ValueError):
        prov = None
    if prov is not None:
        prov = {**prov, "archive_key": new_fp}
    checksum.write_sidecar(path, digest, algo, mode, provenance=prov)


def rekey_file(task: RekeyTask, keys: RekeyKeys) -> RekeyResult:
    """Rotate one archived file to the new archive key; never raises for a per-file problem."""
    t0 = time.monotonic()
    path = Path(task.archive_path)
    res = RekeyResult(
        task.file_id,
        task.dataset_id,
        task.archive_path,
        "failed",
        "",
        old_checksum=task.archive_checksum,
        old_key=task.archive_key,
        new_key=keys.new_fp,
    )
    try:
        if storage.is_s3(task.archive_path):
            from .rekey_s3 import rekey_object

            rekey_object(task, keys, res)
        else:
            _rekey(task, keys, path, res)
    except RekeyError as exc:
        res.result, res.details = "failed", str(exc)
    except IngestError as exc:
        res.result, res.details = "failed", exc.message
    except OSError as exc:
        res.result, res.details = "failed", f"{path}: {exc.strerror or exc} ({type(exc).__name__})"
    res.seconds = time.monotonic() - t0
    return res


def _rekey(task: RekeyTask, keys: RekeyKeys, path: Path, res: RekeyResult) -> None:
    algo = preconditions(task, keys, str(path))
    marker = pending_path(path)
    if marker.exists() and _resume_pending(task, keys, path, marker, algo, res):
        return
    src, reader, hdr = checksum.open_archived(path, keys.old_sk, f"the archive secret key ({keys.old_fp})", algo)
    writer: archive.TempArchiveFile | None = None
    replaced = False
    try:
        new_header = build_header(hdr.packets, keys.new_pk)
        writer = archive.TempArchiveFile(path, keys.file_mode, algo)
        writer.write(new_header)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := reader.readinto(buf):
            writer.write(view[:n])
        new_hex = writer.finish()
        if reader.h.hexdigest() != task.archive_checksum:
            raise RekeyError(
                f"{path}: {algo} {reader.h.hexdigest()} differs from the recorded "
                f"{task.archive_checksum}; not rotated (run `legampi verify-archive`)"
            )
        _check_written(writer.temp, new_header, new_hex, algo, keys, hdr.session_keys, task)
        _write_json_durably(
            marker,
            {
                "algo": algo,
                "old_checksum": task.archive_checksum,
                "new_checksum": new_hex,
                "old_key": task.archive_key or keys.old_fp,
                "new_key": keys.new_fp,
            },
            keys.file_mode,
        )
        os.replace(writer.temp, path)
        replaced = True
        archive.fsync_dir(path.parent)
        _write_sidecar(path, new_hex, algo, keys.new_fp, keys.file_mode)
        res.result, res.new_checksum, res.archive_size = "rekeyed", new_hex, writer.size
        res.bytes_read = reader.count
        res.details = (
            f"{path}: header re-encrypted for key {keys.new_fp} (was {task.archive_key or keys.old_fp}), "
            f"payload unchanged, {algo} {new_hex}"
            + (", decrypts with the new secret key" if keys.new_sk is not None else "")
        )
    finally:
        src.close()
        if writer is not None and not replaced:
            writer.abort()


def _resume_pending(task: RekeyTask, keys: RekeyKeys, path: Path, marker: Path, algo: str, res: RekeyResult) -> bool:
    """A marker left by an interrupted run: True if that run had already replaced the file (recorded now in
    RES), False if it had not (marker removed, rotate from the start); anything else is a RekeyError."""
    pend = read_pending(marker)
    found = checksum.hash_file(path, algo)
    if found == pend["new_checksum"]:
        if pend["new_key"] != keys.new_fp:
            raise RekeyError(
                f"{path}: an interrupted run already rotated it to key {pend['new_key']}, not "
                f"{keys.new_fp}; rerun with that public key to record it"
            )
        if not _sidecar_ok(path, algo, found):
            _write_sidecar(path, found, algo, keys.new_fp, keys.file_mode)
        res.result, res.new_checksum, res.archive_size = "recovered", found, path.stat().st_size
        res.details = f"{path}: found rotated by an interrupted run ({algo} {found}); recorded now"
        return True
    if found != task.archive_checksum:
        raise RekeyError(
            f"{path}: {algo} {found} matches neither the recorded checksum nor the pending "
            f"rotation in {marker.name}; left for an operator"
        )
    marker.unlink()  # a run stopped before its rename: the recorded copy is intact, start over
    archive.fsync_dir(path.parent)
    return False


def _check_written(
    temp: Path, header: bytes, new_hex: str, algo: str, keys: RekeyKeys, session_keys: list[bytes], task: RekeyTask
) -> None:
    """Read the fsynced temp file back: it starts with our header and hashes to the checksum of that header
    plus the payload bytes read from the old copy (so the payload on disk is byte-identical); with the new
    secret key, it also decrypts fully to the recorded plaintext md5/sha256."""
    whole = hashlib.new(algo)
    with open(temp, "rb", buffering=0) as raw:
        reader = checksum.HashingReader(raw, whole)
        if keys.new_sk is None:
            got = bytearray(len(header))
            if read_exact_into(reader, got) != len(header) or bytes(got) != header:
                raise RekeyError(f"{temp}: the header read back differs from the one written")
            buf = bytearray(CHUNK)
            while reader.readinto(buf):
                pass
        else:
            try:
                hdr = read_header(reader, keys.new_sk, str(temp))
            except IngestError as exc:
                raise RekeyError(
                    f"{temp}: the rotated copy does not open with the new secret key ({exc.message})"
                ) from None
            if sorted(hdr.session_keys) != sorted(session_keys):
                raise RekeyError(f"{temp}: the new secret key opens other session keys than the old one")
            md5, sha = hashlib.md5(), hashlib.sha256()
            try:
                for _cipher, plain in iter_segments(reader, hdr.session_keys, CHUNK, str(temp)):
                    md5.update(plain)
                    sha.update(plain)
            except IngestError as exc:
                raise RekeyError(f"{temp}: the rotated copy does not decrypt: {exc.message}") from None
            if task.md5 and md5.hexdigest() != task.md5:
                raise RekeyError(f"{temp}: plaintext md5 {md5.hexdigest()} != recorded {task.md5}")
            if task.sha256 and sha.hexdigest() != task.sha256:
                raise RekeyError(f"{temp}: plaintext sha256 {sha.hexdigest()} != recorded {task.sha256}")
    if whole.hexdigest() != new_hex:
        raise RekeyError(f"{temp}: {algo} read back {whole.hexdigest()} differs from the bytes written {new_hex}")
