"""What both key rotations share (the folder's in legampi.rekey, S3's in legampi.rekey_s3)."""

from __future__ import annotations

from typing import Any

from . import checksum

CHUNK = 4 << 20


class RekeyError(ValueError):
    """A per-file problem that leaves the archived copy and its row exactly as they were."""


def preconditions(task: Any, keys: Any, where: str) -> str:
    """The archive checksum algorithm of TASK, or a RekeyError when it cannot be rotated as recorded."""
    algo = task.archive_checksum_type or "sha256"
    if algo not in checksum.ALGOS:
        raise RekeyError(f"{where}: unknown archive checksum type {algo!r}")
    if not task.archive_checksum:
        raise RekeyError(f"{where}: no archive checksum recorded; run `legampi verify-archive` first")
    if task.archive_key not in (None, keys.old_fp):
        raise RekeyError(
            f"{where}: archived for key {task.archive_key}, but the configured archive secret key is for {keys.old_fp}"
        )
    return algo
