"""What `register` checks before anything reaches the database: every name must be archivable.

A file that can never be archived is refused at registration, with its manifest line, instead of
failing (or stopping a node) at every `process` run: two names that map to one archive path, names
longer than the file systems of processing/end_storage/quarantine allow (with everything legampi derives
from them; with an S3 archive, object keys longer than S3's 1024 bytes), and transfer checksums that are
not what their type says.
"""

from __future__ import annotations

from typing import Any

from . import archive, namelimits, storage
from .checksum import is_hex_digest
from .config import Config
from .formats.base import IngestError
from .manifest import ManifestError


def prepare(entries: list[dict[str, Any]], cfg: Config, source: str) -> list[dict[str, Any]]:
    """Add each entry's archive_name and refuse (ManifestError naming the line) what cannot be archived."""
    ws, exts = cfg.workspaces, tuple(cfg.func.extensions)
    s3 = cfg.archive if cfg.archive.backend == "s3" else None
    processing = namelimits.fs_limits(ws.processing)
    # an S3 archive has no file system limits, only its key length (checked below)
    if s3 is not None:
        end_storage = namelimits.FsLimits(f"s3://{s3.s3_bucket}", None, None)
    else:
        assert ws.end_storage is not None  # config requires it for the folder backend
        end_storage = namelimits.fs_limits(ws.end_storage)
    quarantine = namelimits.fs_limits(ws.quarantine) if ws.quarantine is not None else None
    seen: dict[str, dict[str, Any]] = {}
    for e in entries:
        where = f"{source}:{e['line']}"
        try:
            arch = archive.archive_name(e["file_name"], exts)
            problem = namelimits.name_limits_problem(e["file_name"], exts, processing, end_storage, quarantine, arch)
            problem = problem or (storage.key_problem(s3, arch) if s3 else None)
        except IngestError as exc:
            raise ManifestError(f"{where}: {exc.message}") from None
        if problem is not None:
            raise ManifestError(f"{where}: {problem}")
        first = seen.get(arch)
        if first is not None:
            raise ManifestError(
                f"{where}: {e['file_name']!r} would be archived as {arch!r}, like {first['file_name']!r} on "
                f"line {first['line']}; two files cannot share one archive path: rename one of them"
            )
        seen[arch] = e
        _check_transfer(e, where)
        e["archive_name"] = arch
    return entries


def _check_transfer(e: dict[str, Any], where: str) -> None:
    """The transfer checksum (of the encrypted file as transferred) must be a digest of its stated type."""
    value, kind = e.get("transfer_checksum"), e.get("transfer_checksum_type")
    if value is None and kind is None:
        return
    kind = str(kind or "").lower()
    if kind not in ("md5", "sha256"):
        raise ManifestError(f"{where}: transfer checksum type {e.get('transfer_checksum_type')!r} is not md5 or sha256")
    text = str(value or "").strip().lower()
    if not is_hex_digest(text, kind):
        raise ManifestError(f"{where}: bad transfer {kind} {value!r}")
    e["transfer_checksum"], e["transfer_checksum_type"] = text, kind
