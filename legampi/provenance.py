"""Proof that an archived copy is the one legampi wrote for a given row, and nothing else.

A crash between linking an archived file into place and committing its row leaves a copy the database
does not know. Recovery may record ("adopt") such a copy only with proof, because the alternative of
trusting any file at the right path deletes a researcher's only source when the file is foreign (an
operator's copy, another tool, a second registered name mapping to the same path).

The proof is the provenance line of the checksum sidecar (see `checksum`): written and fsynced before
the archived file gets its final name, it binds the file id, the registered name and the plaintext
checksums the copy was verified against to the checksum of the archived bytes. A copy is adopted only
when the record names the row, agrees with the row's checksums, and the bytes still hash to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legampi import archive, checksum
from legampi.formats import IngestError


def record(
    file_id: str,
    file_name: str,
    dataset_id: str,
    md5: str | None,
    sha256: str | None,
    plain_size: int | None,
    archive_key: str,
) -> dict[str, Any]:
    """The provenance of one archived copy (what the sidecar's comment line holds; with the registered
    checksums and no size, the claim an S3 upload carries from its start)."""
    return {
        "file_id": file_id,
        "file_name": file_name,
        "dataset_id": dataset_id,
        "md5": md5,
        "sha256": sha256,
        "plain_size": plain_size,
        "archive_key": archive_key,
    }


def commit(
    writer: archive.TempArchiveFile, hexdigest: str, algo: str, mode: int, prov: dict[str, Any], rel: str
) -> None:
    """Make a finished temp archive file final: sidecar with provenance first (durable), then the link.
    Durable when this returns: the sidecar's data and name, the archive file's name (its data: finish()).

    Refuses (kind `archive_conflict`) when a sidecar that is not a stale one of this file's own earlier
    attempts stands at the sidecar path; never overwrites a file at the final path. On failure nothing
    of this attempt stays visible (the sidecar written here is removed again).
    """
    final = writer.final
    side = clear_sidecar_path(final, algo, prov, rel)
    # One folder fsync for both names where the file system journals the folder's operations in order
    # (archive.ORDERED_DIR_FS): the sidecar's link is made first, so a crash before that fsync leaves
    # nothing, the sidecar alone (an own orphan: the next attempt or recovery drops it) or both, never
    # the archive file without its provenance. Elsewhere the sidecar's link is made durable on its own.
    ordered = archive.orders_dir_ops(final.parent)
    try:  # never over an existing sidecar: a concurrent writer of the same path loses here
        checksum.write_sidecar(final, hexdigest, algo, mode, provenance=prov, replace=False, sync_dir=not ordered)
    except FileExistsError:
        raise _conflict(rel, side, _owner(side, algo)) from None
    except OSError as e:
        raise os_error(rel, f"writing the checksum sidecar {side}", e) from None
    try:
        writer.commit(durable=True)
    except BaseException as e:
        if not writer.committed:  # a linked archive file keeps its provenance, whatever failed after
            side.unlink(missing_ok=True)
            archive.fsync_dir(side.parent)
        if isinstance(e, OSError):
            raise os_error(rel, f"moving the archived file into place at {final}", e) from None
        raise


def clear_sidecar_path(final: Path, algo: str, prov: dict[str, Any], rel: str) -> Path:
    """The sidecar path of FINAL, free for this file's sidecar: a stale sidecar of this file's own earlier
    attempt (crashed before its link) is removed; anything else there is an `archive_conflict`."""
    side = checksum.sidecar_path(final, algo)
    if os.path.lexists(side):
        owner = _owner(side, algo)
        if owner != prov["file_id"] or os.path.lexists(final):
            raise _conflict(rel, side, owner)
        side.unlink()  # this file's own attempt that crashed before its link: start over
    return side


def sidecar_taken(rel: str, side: Path, algo: str) -> IngestError:
    """A sidecar appeared at SIDE between the check and the link (a concurrent writer of the same path)."""
    return _conflict(rel, side, _owner(side, algo))


def _conflict(rel: str, side: Path, owner: str | None) -> IngestError:
    whose = f"provenance of file {owner}" if owner else "no legampi provenance"
    return IngestError(
        "archive_conflict",
        f"{rel}: {side} already exists and is not from an earlier attempt at this file ({whose}); "
        "not overwritten, the source is kept",
    )


def _owner(side: Path, algo: str) -> str | None:
    try:
        return (checksum.read_sidecar(side, algo)[2] or {}).get("file_id")
    except (OSError, ValueError):
        return None


def os_error(rel: str, stage: str, e: OSError) -> IngestError:
    """An OSError of a commit step as the failure kind the operator acts on (`nospace` or `io`)."""
    import errno

    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return IngestError("nospace", f"{rel}: {stage}: no space left on device")
    return IngestError("io", f"{rel}: {stage}: {e.strerror or e}")


@dataclass
class Verdict:
    """What recovery found at a row's archive path."""

    adopt: bool
    reason: str  # why not, for the operator; empty when adopted
    digest: str | None = None
    algo: str | None = None
    record: dict[str, Any] | None = None


def examine(final: Path, row: dict[str, Any]) -> Verdict:
    """Is the file at `final` the copy legampi archived for `row` (file_id, file_name, md5, sha256)?

    Reads the whole file once to hash it: only crash leftovers pay this, never the normal path."""
    found = [(side, algo) for algo in checksum.ALGOS if (side := checksum.sidecar_path(final, algo)).is_file()]
    if not found:
        return Verdict(False, f"{final} has no checksum sidecar with legampi provenance (not archived by legampi)")
    reasons = []
    for side, algo in found:
        try:
            expected, name, prov = checksum.read_sidecar(side, algo)
        except (OSError, ValueError) as exc:
            reasons.append(f"{side.name}: {exc}")
            continue
        why = _mismatch(prov, row, name, final)
        if why:
            reasons.append(f"{side.name}: {why}")
            continue
        digest = checksum.hash_file(final, algo)
        if digest != expected:
            reasons.append(f"{side.name}: the file hashes to {algo} {digest}, its sidecar says {expected}")
            continue
        return Verdict(True, "", digest, algo, prov)
    return Verdict(False, f"{final}: " + "; ".join(reasons))


def _mismatch(prov: dict[str, Any] | None, row: dict[str, Any], name: str, final: Path) -> str:
    if prov is None:
        return "no legampi provenance"
    if name != final.name:
        return f"names {name!r}, not {final.name!r}"
    if prov.get("file_id") != row["file_id"]:
        return f"archived for file {prov.get('file_id')!r}, not {row['file_id']!r}"
    if prov.get("file_name") != row["file_name"]:
        return f"archived from {prov.get('file_name')!r}, not {row['file_name']!r}"
    return checksums_mismatch(prov, row)


def checksums_mismatch(prov: dict[str, Any], row: dict[str, Any]) -> str:
    """Why a provenance record's plaintext checksums do not prove ROW (empty when they do); shared by the
    folder's sidecars and S3 object metadata."""
    for key in ("md5", "sha256"):
        if row.get(key) and prov.get(key) != row[key]:
            return f"archived with plaintext {key} {prov.get(key)}, the row expects {row[key]}"
    if not (row.get("md5") or row.get("sha256")):
        return "the row has no plaintext checksum to compare with"
    return ""
