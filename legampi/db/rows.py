"""The tracking database's rows as dataclasses, and the column lists derived from them.

A typed row (``FileRow``, ``DatasetRow``, ``JobRow``) is what the ``*_rows`` methods of ``Database``
return, so mypy checks every field a caller reads; the older dict-returning methods (``files``,
``datasets``, ``jobs``) remain for callers that select a few columns or pass rows on as JSON.
The column lists are read off the dataclasses, so the SQL and the types cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class FileRow:
    """One registered file (table ``file``), every column, in table order."""

    file_id: str
    dataset_id: str
    file_name: str  # relative to receiving / processing
    size: int | None  # the transferred size: bytes of the file as received (encrypted)
    md5: str | None  # plaintext, from the manifest or computed
    sha256: str | None
    status: str  # one of legampi.status.STATUSES
    archive_path: str | None
    archive_checksum: str | None
    archive_checksum_type: str | None
    archive_key: str | None  # fingerprint of the archive public key used
    plain_size: int | None  # the plaintext size, recorded when archived
    archive_size: int | None
    error: str | None
    attempts: int
    claimed_by: str | None  # job id while `processing`, or while a rekey/verify-archive holds it `available`
    claimed_at: str | None
    created_at: str
    updated_at: str
    archive_name: str | None  # archive path relative to end_storage (schema version 2)
    transfer_checksum: str | None  # of the file as transferred (encrypted)
    transfer_checksum_type: str | None
    file_number: int  # registration number, given by the database (version 4): array shares go by it

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> FileRow:
        return cls(**row)


@dataclass(frozen=True, slots=True)
class DatasetRow:
    """One dataset (table ``dataset_log``): true totals and the four dates (ISO strings or None)."""

    dataset_id: str
    n_files: int
    n_bytes: int
    date_requested: str | None
    date_download_start: str | None
    date_download_end: str | None
    date_processing_end: str | None

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> DatasetRow:
        return cls(**row)


@dataclass(frozen=True, slots=True)
class JobRow:
    """One job (table ``job``): a `process`, `verify-archive`, `rekey` or `export` run."""

    job_id: str
    command: str
    host: str
    pid: int
    ranks: int
    started_at: str
    heartbeat_at: str
    ended_at: str | None
    exit_status: int | None
    summary: str | None
    state: str  # running, ended or died

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> JobRow:
        return cls(**row)


FILE_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(FileRow))
DATASET_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(DatasetRow))
JOB_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(JobRow))
# What `register --amend` may correct (expected values from the manifest), in the order events list them.
AMENDABLE = ("md5", "sha256", "transfer_checksum", "transfer_checksum_type", "size")


@dataclass
class Event:
    """One line of the append-only audit log (table ``file_event``); job and time are given when added."""

    file_id: str | None
    dataset_id: str | None
    event: str
    status: str | None = None
    details: str | None = None


@dataclass
class Registration:
    """What `register` (or `register --amend`) did with a manifest."""

    added: int = 0
    unchanged: int = 0
    amended: int = 0
    retried: list[str] = field(default_factory=list)  # failed files back to `received`
    stuck: list[str] = field(default_factory=list)  # failed, checksum corrected, source not in processing
