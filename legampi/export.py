"""Researcher export (`legampi export`): a dataset's archived files re-encrypted for one recipient's key.

Like `rekey`, only the Crypt4GH header is rewritten (`formats.crypt4gh.build_header`, the one header
seal) and the payload bytes are copied unchanged, so no plaintext is ever written. The export folder
gets, besides the files, a sha256 manifest (`<dataset>.sha256`, checked with `sha256sum -c`) and a file
list (`<dataset>.tab`) with the plaintext checksums. Nothing existing is ever overwritten. Files archived
in S3 are read from their objects (one GET each, legampi.s3read); the export folder is always local.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from . import archive, checksum, storage
from .db import Database, Event
from .formats import IngestError
from .formats.crypt4gh import build_header, iter_segments
from .keys import fingerprint, load_public_key, load_secret_key
from .parallel import Executor, Job, NotReady, execute

CHUNK = 4 << 20
log = logging.getLogger("legampi.export")


class ExportError(ValueError):
    """A per-file problem: that file is not exported (no partial file is left in the export folder)."""


@dataclass
class ExportItem:
    file_id: str
    file_name: str
    rel: str  # path inside the export folder (= the archive name, inside end_storage or the S3 prefix)
    source: Path | str  # the archived file, or its s3://bucket/key
    dest: Path
    archive_checksum: str | None
    archive_checksum_type: str | None
    archive_key: str | None
    md5: str | None
    sha256: str | None
    plain_size: int | None
    top: Path  # the export folder: directories are made below it only


@dataclass
class ExportResult:
    """What a rank sends back for one item: the exported file's sha256, or why it was not exported."""

    file_id: str
    digest: str | None = None
    error: str | None = None


def _new_file(path: Path, data: bytes, mode: int) -> None:
    """Write a complete new file (temp, fsync, link: an existing file is never replaced)."""
    w = archive.TempArchiveFile(path, mode)
    try:
        w.write(data)
        w.finish()
        try:
            w.commit()
        except IngestError:
            raise ExportError(f"{path}: already exists; not overwritten") from None
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
    reader: Any
    if storage.is_s3(item.source):
        from .s3read import open_archived

        src, reader, hdr, _info = open_archived(str(item.source), archive_sk, "the archive secret key", algo)
    else:
        src, reader, hdr = checksum.open_archived(Path(item.source), archive_sk, "the archive secret key", algo)
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
                raise ExportError(exc.message) from None
        else:
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while n := reader.readinto(buf):
                writer.write(view[:n])
        digest = writer.finish()
        found = reader.h.hexdigest()
        if item.archive_checksum and found != item.archive_checksum:
            raise ExportError(
                f"{item.source}: {algo} {found} differs from the recorded {item.archive_checksum}; "
                "not exported (run `legampi verify-archive`)"
            )
        if verify and item.md5 and md5.hexdigest() != item.md5:
            raise ExportError(f"{item.source}: plaintext md5 {md5.hexdigest()} != recorded {item.md5}")
        if verify and item.sha256 and sha.hexdigest() != item.sha256:
            raise ExportError(f"{item.source}: plaintext sha256 {sha.hexdigest()} != recorded {item.sha256}")
        try:
            writer.commit()
        except IngestError:
            raise ExportError(f"{item.dest}: already exists; not overwritten") from None
        return digest
    finally:
        src.close()
        if writer is not None and not writer.committed:
            writer.abort()


def export_plan(
    rows: Iterable[dict[str, Any]], end_storage: Path | None, to: Path
) -> tuple[list[ExportItem], list[str]]:
    """Where each available file goes in the export folder, and why any cannot go (outside the archive)."""
    items, problems = [], []
    root = Path(end_storage).absolute() if end_storage is not None else None
    for r in rows:
        try:
            src, rel = _archived_at(r["archive_path"] or "", root)
        except (ValueError, IngestError) as exc:
            problems.append(f"file {r['file_id']}: {exc.message if isinstance(exc, IngestError) else exc}")
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
                to,
            )
        )
    return items, problems


def _archived_at(location: str, root: Path | None) -> tuple[Path | str, PurePosixPath]:
    """(source, archive name) of a recorded archive_path: an s3:// object of the configured [archive],
    or a file inside end_storage ROOT (ValueError otherwise)."""
    if storage.is_s3(location):
        return location, PurePosixPath(storage.store_at(location)[1])
    src = Path(location)
    if root is None:
        raise ValueError(f"archive path {src} is a file, but no end_storage is configured")
    try:
        return src, PurePosixPath(src.absolute().relative_to(root))
    except ValueError:
        raise ValueError(f"archive path {src} is not inside end_storage {root}") from None


def run_export(
    cfg: Any,
    db: Database | Callable[[], Database],
    dataset_id: str,
    recipient_pk_path: str | os.PathLike,
    to: str | os.PathLike,
    partial: bool = False,
    verify: bool = False,
    out: Any = None,
    *,
    team: Any = None,
) -> int:
    """`legampi export`: the dataset's archived files for one researcher's key, a sha256 manifest and a
    file list. Refuses (writing nothing) when a file is not archived (unless PARTIAL) or a target exists.
    DB: the database, or (with a TEAM of several ranks) a function that opens it on rank 0."""
    job: Job[Database] = Job(
        open=(lambda: db) if isinstance(db, Database) else db,
        load=lambda _rank: load_exporter(cfg, recipient_pk_path, verify),
        coordinate=lambda d, ex: export_dataset(
            d, ex, cfg, dataset_id, fingerprint(load_public_key(recipient_pk_path)), to, partial, verify, out
        ),
    )
    return execute(job, team, log)


def load_exporter(cfg: Any, recipient_pk_path: str | os.PathLike, verify: bool) -> Callable[[ExportItem], ExportResult]:
    """A working rank's work function: the archive secret key opens each header, resealed for the recipient."""
    if cfg.crypto.archive_secret_key is None:
        raise NotReady("export needs [crypto] archive_secret_key to open the archived headers")
    pw = cfg.crypto.archive_passphrase.reveal() if cfg.crypto.archive_passphrase else None
    archive_sk = load_secret_key(cfg.crypto.archive_secret_key, pw)
    recipient_pk = load_public_key(recipient_pk_path)

    def work(item: ExportItem) -> ExportResult:
        try:
            digest = export_file(item, archive_sk, recipient_pk, item.top, verify, cfg.crypto.file_mode)
        except (ExportError, IngestError, OSError) as exc:
            return ExportResult(item.file_id, error=exc.message if isinstance(exc, IngestError) else str(exc))
        return ExportResult(item.file_id, digest=digest)

    return work


def export_dataset(
    db: Database,
    ex: Executor,
    cfg: Any,
    dataset_id: str,
    rfp: str,
    to: str | os.PathLike,
    partial: bool = False,
    verify: bool = False,
    out: Any = None,
) -> int:
    """Rank 0's `export` for the recipient key RFP: check, plan, export every item through EX, record
    one event each, then the manifest and file list. Exit 1 when anything was refused or failed."""
    out = out or sys.stdout
    err = sys.stderr if out is sys.stdout else out
    rows = db.files(dataset_id)
    missing = [r for r in rows if r["status"] != "available"]
    if not _may_export(rows, missing, dataset_id, partial, err):
        return 1
    top = Path(to).absolute()
    store = Path(cfg.workspaces.end_storage).absolute() if cfg.workspaces.end_storage is not None else None
    if store is not None and (top == store or store in top.parents):
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
    done, failed = _export_items(ex, db, dataset_id, items, rfp, top, verify, cfg.func.batch_size, out)
    if failed:
        print(
            f"export of {dataset_id} INCOMPLETE: {len(done)} exported, {len(failed)} failed; no manifest written. "
            f"Remove {top} and rerun once the causes are fixed.",
            file=out,
        )
        return 1
    write_lists(sorted(done, key=lambda d: d[0].rel), manifest, listing, cfg.crypto.file_mode)
    print(
        f"exported dataset {dataset_id}: {len(done)} file(s) for recipient key {rfp} into {top}"
        + (f" ({len(missing)} not available, skipped)" if missing else "")
        + f"; check with: cd {top} && sha256sum -c {manifest.name}",
        file=out,
    )
    return 0


def _may_export(
    rows: list[dict[str, Any]], missing: list[dict[str, Any]], dataset_id: str, partial: bool, err: Any
) -> bool:
    """False (and why, on ERR) when the dataset is unknown or has unavailable files without PARTIAL."""
    if not rows:
        print(f"export: no dataset {dataset_id!r} (or it has no files)", file=err)
        return False
    if missing and not partial:
        print(
            f"export: dataset {dataset_id}: {len(missing)} of {len(rows)} file(s) are not available; nothing "
            "exported (use --partial to export the archived ones):",
            file=err,
        )
        for r in missing[:20]:
            print(f"  {r['file_id']} {r['file_name']} ({r['status']})", file=err)
        return False
    return True


def _export_items(
    ex: Executor,
    db: Database,
    dataset_id: str,
    items: list[ExportItem],
    rfp: str,
    top: Path,
    verify: bool,
    batch_size: int,
    out: Any,
) -> tuple[list[tuple[ExportItem, str]], list[str]]:
    """Export every item (in path order on one rank), one event each, recorded in batches: (exported with
    sha256, failures)."""
    by_id = {i.file_id: i for i in items}
    done: list[tuple[ExportItem, str]] = []
    failed: list[str] = []
    events: list[Event] = []

    def on_result(r: ExportResult) -> None:
        item = by_id[r.file_id]
        if r.digest is None:
            failed.append(f"{item.rel}: {r.error}")
            events.append(Event(item.file_id, dataset_id, "export-failed", None, f"to {top}: {r.error}"))
            print(f"  FAILED {item.rel}: {r.error}", file=out)
        else:
            done.append((item, r.digest))
            details = f"{item.dest} for recipient key {rfp}, sha256 {r.digest}" + (
                ", payload verified" if verify else ""
            )
            events.append(Event(item.file_id, dataset_id, "exported", "available", details))
            print(f"  EXPORTED {item.rel} sha256 {r.digest}", file=out)
        if len(events) >= batch_size:
            db.add_events(events)
            events.clear()

    ex.run(items, on_result, schedule="static", key=lambda i: i.plain_size or 0, name=lambda i: i.rel)
    db.add_events(events)
    return done, failed


def write_lists(done: list[tuple[ExportItem, str]], manifest: Path, listing: Path, mode: int) -> None:
    """The sha256sum-compatible manifest of the exported files and the tab-separated file list."""
    _new_file(
        manifest,
        "".join(checksum.format_line(d, i.rel) for i, d in done).encode("utf-8", "surrogateescape"),
        mode,
    )
    tab = "#file_id\tname\tmd5\tsha256\tplaintext_size\n" + "".join(  # the exported files are plaintext
        f"{i.file_id}\t{i.rel}\t{i.md5 or ''}\t{i.sha256 or ''}\t{'' if i.plain_size is None else i.plain_size}\n"
        for i, _d in done
    )
    _new_file(listing, tab.encode("utf-8", "surrogateescape"), mode)
