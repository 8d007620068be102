"""Archive key rotation (`legampi rekey`) and researcher export (`legampi export`) by header re-encryption.

A Crypt4GH file's header holds its session keys encrypted for one reader's public key; the payload is
encrypted with the session keys. Giving the data to a new reader (the next archive key, a researcher)
therefore rewrites only the header and copies the payload bytes unchanged: no plaintext is ever written,
and the work per file is one read plus one write.

Rotation replaces the recorded archive copy in place, so its crash windows are closed with a small
pending marker ``<file>.rekey`` (JSON: old and new checksum and key), written durably *before* the
rename. A rerun that finds a marker tells a finished-but-unrecorded rotation (the file hashes to the
marker's new checksum) from one that never replaced the file (it still hashes to the recorded checksum);
the marker is removed only after the database row points at the new copy.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import archive, checksum
from .db import Database, DatabaseError, Event
from .formats import IngestError, read_exact_into
from .formats.crypt4gh import build_header, iter_segments, read_header
from .ingest import make_job_id
from .keys import fingerprint, load_public_key, load_secret_key, public_from_secret

log = logging.getLogger("legampi.rekey")

NEW_PASSPHRASE_ENV = "LEGAMPI_NEW_ARCHIVE_PASSPHRASE"
CHUNK = 4 << 20


class RekeyError(ValueError):
    """A per-file problem that leaves the archived copy and its row exactly as they were."""


# ---------------------------------------------------------------------- reading an archived copy
def _open_archived(path: Path, secret_key: bytes, key_name: str, algo: str) -> tuple[Any, checksum.HashingReader, Any]:
    """Open an archived file read-only (no symlinks) and read its header with SECRET_KEY.

    Every byte read is hashed with ALGO (the header included), so one pass also checks the recorded checksum.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    src = open(fd, "rb", buffering=0)
    try:
        reader = checksum.HashingReader(src, hashlib.new(algo))
        try:
            hdr = read_header(reader, secret_key, str(path))
        except IngestError as exc:
            if exc.kind == "key":
                raise RekeyError(f"{path}: no header packet opens with {key_name}") from None
            raise RekeyError(exc.message) from None
    except BaseException:
        src.close()
        raise
    return src, reader, hdr


# ---------------------------------------------------------------------- rotation: one file
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


def pending_path(path: Path) -> Path:
    """The marker that says `path` may already have been replaced by its rotated copy."""
    return path.with_name(path.name + archive.PENDING_SUFFIX)


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
    algo = task.archive_checksum_type or "sha256"
    if algo not in checksum.ALGOS:
        raise RekeyError(f"{path}: unknown archive checksum type {algo!r}")
    if not task.archive_checksum:
        raise RekeyError(f"{path}: no archive checksum recorded; run `legampi verify-archive` first")
    if task.archive_key not in (None, keys.old_fp):
        raise RekeyError(
            f"{path}: archived for key {task.archive_key}, but the configured archive secret key is for {keys.old_fp}"
        )
    marker = pending_path(path)
    if marker.exists():
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
            return
        if found != task.archive_checksum:
            raise RekeyError(
                f"{path}: {algo} {found} matches neither the recorded checksum nor the pending "
                f"rotation in {marker.name}; left for an operator"
            )
        marker.unlink()  # a run stopped before its rename: the recorded copy is intact, start over
        archive.fsync_dir(path.parent)

    src, reader, hdr = _open_archived(path, keys.old_sk, f"the archive secret key ({keys.old_fp})", algo)
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


# ---------------------------------------------------------------------- rotation: the run
class RekeyRecorder:
    """Rank 0: buffers results, records each flush in one transaction, then drops the pending markers."""

    def __init__(self, db: Database, batch_size: int, flush_interval: float, job_id: str | None = None):
        self.db, self.batch_size, self.flush_interval, self.job_id = db, max(1, batch_size), flush_interval, job_id
        self.buffer: list[RekeyResult] = []
        self.done: list[RekeyResult] = []
        self.last = time.monotonic()

    def add(self, r: RekeyResult) -> None:
        self.buffer.append(r)
        if len(self.buffer) >= self.batch_size:
            self.flush()

    def tick(self) -> None:
        if self.buffer and time.monotonic() - self.last >= self.flush_interval:
            self.flush()
        elif self.job_id is not None and time.monotonic() - self.last >= 30:
            self.db.job_heartbeat(self.job_id)
            self.last = time.monotonic()

    def flush(self) -> None:
        if not self.buffer:
            return
        batch, self.buffer = self.buffer, []
        good = [r for r in batch if r.result != "failed"]
        rows = [
            {
                "file_id": r.file_id,
                "dataset_id": r.dataset_id,
                "old_checksum": r.old_checksum,
                "new_checksum": r.new_checksum,
                "new_key": r.new_key,
                "archive_size": r.archive_size,
                "details": f"archive key {r.old_key or '?'} -> {r.new_key}: {r.details} (rank {r.rank})",
            }
            for r in good
        ]
        with self.db.transaction():
            changed = set(self.db.record_rekeys(rows, self.job_id))
            for r in good:
                if r.file_id not in changed:
                    r.result = "failed"
                    r.details += (
                        "; NOT recorded: the row changed meanwhile (no longer available with the old "
                        "checksum); the pending marker is kept for an operator"
                    )
            self.db.add_events(
                [
                    Event(r.file_id, r.dataset_id, "rekey-failed", None, r.details)
                    for r in batch
                    if r.result == "failed"
                ],
                self.job_id,
            )
        for r in good:
            if r.file_id in changed:
                marker = pending_path(Path(r.archive_path))
                marker.unlink(missing_ok=True)
                archive.fsync_dir(marker.parent)
        for r in batch:
            (log.info if r.result != "failed" else log.error)("rekey %s: %s (file %s)", r.result, r.details, r.file_id)
        self.done += batch
        self.last = time.monotonic()


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


def rekey_tasks(
    db: Database, new_fp: str, dataset: str | None = None, limit: int | None = None
) -> tuple[list[RekeyTask], int]:
    """`available` files not yet on the new key (and how many already are); markers left by a run that
    crashed after its commit are removed here."""
    tasks, already = [], 0
    for r in db.files(dataset, status="available"):
        if r["archive_key"] == new_fp:
            already += 1
            marker = pending_path(Path(r["archive_path"]))
            if marker.exists():
                try:
                    stale = read_pending(marker)["new_checksum"] == r["archive_checksum"]
                except RekeyError as exc:
                    log.error("%s", exc)
                    continue
                if stale:
                    marker.unlink()
                    archive.fsync_dir(marker.parent)
            continue
        tasks.append(
            RekeyTask(
                r["file_id"],
                r["dataset_id"],
                r["archive_path"],
                r["archive_checksum"],
                r["archive_checksum_type"],
                r["archive_key"],
                r["md5"],
                r["sha256"],
                int(r["archive_size"] or r["size"] or 0),
            )
        )
    tasks.sort(key=lambda t: t.archive_path)
    return (tasks[:limit] if limit is not None else tasks), already


def run_rekey(
    cfg: Any,
    team: Any,
    connect: Callable[[], Database],
    new_public_key: str | os.PathLike,
    new_secret_key: str | os.PathLike | None = None,
    dataset: str | None = None,
    limit: int | None = None,
    out: Any = None,
) -> int:
    """`legampi rekey` on every rank: rank 0 lists and records, workers rotate files. Exit 0 all rotated,
    1 some failed, 2 could not start."""
    out = out or sys.stdout
    problem, db, keys = "", None, None
    try:
        keys = load_rekey_keys(cfg, new_public_key, new_secret_key)
    except (RekeyError, ValueError, OSError) as exc:
        problem = str(exc)
    if team.coordinator and not problem:
        try:
            db = connect()
            db.require_schema()
        except DatabaseError as exc:
            problem = str(exc)
    if not team.ready(problem, log):
        return 2
    assert keys is not None

    def work(t: RekeyTask) -> RekeyResult:
        r = rekey_file(t, keys)
        r.rank = team.rank
        return r

    code = 0
    if team.coordinator:
        assert db is not None
        # A job row with a heartbeat: recovery keeps the temp files of a live rekey job.
        job_id = make_job_id()
        db.job_start(job_id, "rekey", socket.gethostname(), team.size)
        tasks, already = rekey_tasks(db, keys.new_fp, dataset, limit)
        recorder = RekeyRecorder(db, cfg.func.batch_size, cfg.func.flush_interval, job_id)
        team.run(tasks, work, recorder.add, recorder.tick, key=lambda t: t.size, name=lambda t: t.archive_path)
        recorder.flush()
        lines = rekey_lines(recorder.done, keys, already, len(tasks), cfg)
        code = 1 if any(r.result == "failed" for r in recorder.done) else 0
        db.job_end(job_id, code, "\n".join(lines[-2:]))
        for line in lines:
            print(line, file=out)
        out.flush()
    else:
        team.run(None, work, lambda r: None)
    return int(team.bcast(code))


def rekey_lines(results: Sequence[RekeyResult], keys: RekeyKeys, already: int, planned: int, cfg: Any) -> list[str]:
    """The operator's report: one line per file, a summary, and what to do next."""
    counts = {k: sum(r.result == k for r in results) for k in ("rekeyed", "recovered", "failed")}
    lines = [
        f"  {r.result.upper()} {r.details} (rank {r.rank}, {r.seconds:.2f}s)"
        for r in sorted(results, key=lambda r: r.archive_path)
    ]
    mb = sum(r.bytes_read for r in results) / 1e6
    lines.append(
        f"rekey to archive key {keys.new_fp} (from {keys.old_fp}): {planned} file(s) to rotate, "
        f"{counts['rekeyed']} rekeyed, {counts['recovered']} recovered from an interrupted run, "
        f"{counts['failed']} failed, {already} already on the new key; {mb:.1f} MB read"
    )
    if counts["failed"]:
        lines.append("some files were not rotated: fix the causes above and rerun `legampi rekey` (it resumes)")
    elif fingerprint(load_public_key(cfg.crypto.archive_public_key)) != keys.new_fp:
        lines.append(
            f"REMINDER: edit {cfg.path or 'the configuration'}: set [crypto] archive_public_key to the new "
            "public key and archive_secret_key/archive_passphrase to the new secret key; until then new "
            "files are still archived for the old key (rerun rekey afterwards to catch them)"
        )
    return lines


# ---------------------------------------------------------------------- export for a researcher
@dataclass
class ExportItem:
    file_id: str
    file_name: str
    rel: str  # path inside the export folder (= inside end_storage)
    source: Path
    dest: Path
    archive_checksum: str | None
    archive_checksum_type: str | None
    archive_key: str | None
    md5: str | None
    sha256: str | None
    plain_size: int | None


def _new_file(path: Path, data: bytes, mode: int) -> None:
    """Write a complete new file (temp, fsync, link: an existing file is never replaced)."""
    w = archive.TempArchiveFile(path, mode)
    try:
        w.write(data)
        w.finish()
        try:
            w.commit()
        except IngestError:
            raise RekeyError(f"{path}: already exists; not overwritten") from None
    finally:
        if not w.committed:
            w.abort()


def export_file(
    item: ExportItem, archive_sk: bytes, recipient_pk: bytes, top: Path, verify: bool = False, file_mode: int = 0o640
) -> str:
    """Write ITEM's archived copy re-encrypted for RECIPIENT_PK to item.dest; returns its sha256.

    The archived bytes are checked against the recorded archive checksum in the same read; with VERIFY
    the payload is also decrypted in memory (MACs and plaintext md5/sha256 against the record).
    """
    algo = item.archive_checksum_type or "sha256"
    src, reader, hdr = _open_archived(item.source, archive_sk, "the archive secret key", algo)
    writer: archive.TempArchiveFile | None = None
    try:
        header = build_header(hdr.packets, recipient_pk)
        archive.make_dirs(item.dest.parent, top)
        writer = archive.TempArchiveFile(item.dest, file_mode, "sha256")
        writer.write(header)
        md5, sha = hashlib.md5(), hashlib.sha256()
        if verify:
            try:
                for cipher, plain in iter_segments(reader, hdr.session_keys, CHUNK, str(item.source)):
                    md5.update(plain)
                    sha.update(plain)
                    writer.write(cipher)
            except IngestError as exc:
                raise RekeyError(exc.message) from None
        else:
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while n := reader.readinto(buf):
                writer.write(view[:n])
        digest = writer.finish()
        found = reader.h.hexdigest()
        if item.archive_checksum and found != item.archive_checksum:
            raise RekeyError(
                f"{item.source}: {algo} {found} differs from the recorded {item.archive_checksum}; "
                "not exported (run `legampi verify-archive`)"
            )
        if verify and item.md5 and md5.hexdigest() != item.md5:
            raise RekeyError(f"{item.source}: plaintext md5 {md5.hexdigest()} != recorded {item.md5}")
        if verify and item.sha256 and sha.hexdigest() != item.sha256:
            raise RekeyError(f"{item.source}: plaintext sha256 {sha.hexdigest()} != recorded {item.sha256}")
        try:
            writer.commit()
        except IngestError:
            raise RekeyError(f"{item.dest}: already exists; not overwritten") from None
        return digest
    finally:
        src.close()
        if writer is not None and not writer.committed:
            writer.abort()


def export_plan(rows: Iterable[dict[str, Any]], end_storage: Path, to: Path) -> tuple[list[ExportItem], list[str]]:
    """Where each available file goes in the export folder, and why any cannot go (outside the archive)."""
    items, problems = [], []
    root = Path(end_storage).absolute()
    for r in rows:
        src = Path(r["archive_path"] or "")
        try:
            rel = src.absolute().relative_to(root)
        except ValueError:
            problems.append(f"file {r['file_id']}: archive path {src} is not inside end_storage {root}")
            continue
        try:
            archive.check_rel(rel.as_posix())
        except IngestError as exc:
            problems.append(f"file {r['file_id']}: {exc.message}")
            continue
        items.append(
            ExportItem(
                r["file_id"],
                r["file_name"],
                rel.as_posix(),
                src,
                to / rel,
                r["archive_checksum"],
                r["archive_checksum_type"],
                r["archive_key"],
                r["md5"],
                r["sha256"],
                r["plain_size"],
            )
        )
    return items, problems


def run_export(
    cfg: Any,
    db: Database,
    dataset_id: str,
    recipient_pk_path: str | os.PathLike,
    to: str | os.PathLike,
    partial: bool = False,
    verify: bool = False,
    out: Any = None,
) -> int:
    """`legampi export`: the dataset's archived files for one researcher's key, a sha256 manifest and a
    file list. Refuses (writing nothing) when a file is not archived (unless PARTIAL) or a target exists."""
    out = out or sys.stdout
    err = sys.stderr if out is sys.stdout else out
    rows = db.files(dataset_id)
    if not rows:
        print(f"export: no dataset {dataset_id!r} (or it has no files)", file=err)
        return 1
    missing = [r for r in rows if r["status"] != "available"]
    if missing and not partial:
        print(
            f"export: dataset {dataset_id}: {len(missing)} of {len(rows)} file(s) are not available; nothing "
            "exported (use --partial to export the archived ones):",
            file=err,
        )
        for r in missing[:20]:
            print(f"  {r['file_id']} {r['file_name']} ({r['status']})", file=err)
        return 1
    if cfg.crypto.archive_secret_key is None:
        print("export: needs [crypto] archive_secret_key to open the archived headers", file=err)
        return 2
    pw = cfg.crypto.archive_passphrase.reveal() if cfg.crypto.archive_passphrase else None
    archive_sk = load_secret_key(cfg.crypto.archive_secret_key, pw)
    recipient_pk = load_public_key(recipient_pk_path)
    rfp = fingerprint(recipient_pk)
    top = Path(to).absolute()
    store = Path(cfg.workspaces.end_storage).absolute()
    if top == store or store in top.parents:
        print(f"export: {top} is inside the archive {store}; export somewhere else", file=err)
        return 1
    items, problems = export_plan([r for r in rows if r["status"] == "available"], cfg.workspaces.end_storage, top)
    manifest, listing = top / f"{dataset_id}.sha256", top / f"{dataset_id}.tab"
    problems += [
        f"{p}: already exists; not overwritten"
        for p in [i.dest for i in items] + [manifest, listing]
        if os.path.lexists(p)
    ]
    if problems:
        print(f"export: dataset {dataset_id}: nothing exported:", file=err)
        for p in problems:
            print(f"  {p}", file=err)
        return 1
    top.mkdir(mode=archive.DIR_MODE, parents=True, exist_ok=True)
    done: list[tuple[ExportItem, str]] = []
    failed: list[str] = []
    events: list[Event] = []
    for item in sorted(items, key=lambda i: i.rel):
        try:
            digest = export_file(item, archive_sk, recipient_pk, top, verify, cfg.crypto.file_mode)
        except (RekeyError, IngestError, OSError) as exc:
            text = exc.message if isinstance(exc, IngestError) else str(exc)
            failed.append(f"{item.rel}: {text}")
            events.append(Event(item.file_id, dataset_id, "export-failed", None, f"to {top}: {text}"))
            print(f"  FAILED {item.rel}: {text}", file=out)
        else:
            done.append((item, digest))
            events.append(
                Event(
                    item.file_id,
                    dataset_id,
                    "exported",
                    "available",
                    f"{item.dest} for recipient key {rfp}, sha256 {digest}" + (", payload verified" if verify else ""),
                )
            )
            print(f"  EXPORTED {item.rel} sha256 {digest}", file=out)
        if len(events) >= cfg.func.batch_size:
            db.add_events(events)
            events = []
    db.add_events(events)
    if failed:
        print(
            f"export of {dataset_id} INCOMPLETE: {len(done)} exported, {len(failed)} failed; no manifest written. "
            f"Remove {top} and rerun once the causes are fixed.",
            file=out,
        )
        return 1
    _new_file(
        manifest,
        "".join(checksum.format_line(d, i.rel) for i, d in done).encode("utf-8", "surrogateescape"),
        cfg.crypto.file_mode,
    )
    tab = "#file_id\tname\tmd5\tsha256\tsize\n" + "".join(
        f"{i.file_id}\t{i.rel}\t{i.md5 or ''}\t{i.sha256 or ''}\t{'' if i.plain_size is None else i.plain_size}\n"
        for i, _d in done
    )
    _new_file(listing, tab.encode("utf-8", "surrogateescape"), cfg.crypto.file_mode)
    print(
        f"exported dataset {dataset_id}: {len(done)} file(s) for recipient key {rfp} into {top}"
        + (f" ({len(missing)} not available, skipped)" if missing else "")
        + f"; check with: cd {top} && sha256sum -c {manifest.name}",
        file=out,
    )
    return 0
