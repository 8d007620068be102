"""The archive's state as the operator commands read it: `status`, `report`, `count` and `track`.

One read model for each question an operator asks:

- ``ArchiveStatus``: every dataset's files and bytes per status and its four dates, and the files
  themselves (``status``, ``report``). Built from the database's rows by ``ArchiveStatus.from_rows``;
  ``to_json`` is the ``status --json`` document.
- ``FolderCount``: files and bytes in one workspace folder (``count``).
- ``Arrivals``: which files seen in receiving at ``track start`` reached the archive (``track``).

Pure: this module imports nothing from legampi and does no I/O of its own (``ArchiveStatus.read`` asks
the database object it is given), so the database layer, which keeps the SQL, takes its status names from
here, and every model is tested from plain rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

# A file's life: registered (pending), transfer finished (received), claimed by a job (processing),
# archived and committed (available), or failed with a recorded reason.
STATUSES: tuple[str, ...] = ("pending", "received", "processing", "available", "failed")
# A dataset's four dates, in the order they happen.
DATASET_DATES: tuple[str, ...] = ("date_requested", "date_download_start", "date_download_end", "date_processing_end")
# The workspace folders `count` lists, by their configuration names.
COUNTED_FOLDERS: tuple[str, ...] = ("receiving", "processing", "end_storage", "quarantine")


def parse_time(value: str | None) -> datetime | None:
    """A stored timestamp (ISO-8601; ``Z`` allowed; a naive value is UTC, as the database stores) as an
    aware UTC datetime; None stays None. Raises ValueError for anything else."""
    if value is None:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


@dataclass(frozen=True)
class Count:
    """Files and bytes: one dataset's share in one status. BYTES is the transferred size (the files as
    received, encrypted); PLAIN_BYTES the plaintext size, known once a file is archived (0 before)."""

    files: int = 0
    bytes: int = 0
    plain_bytes: int = 0

    def to_json(self) -> dict[str, int]:
        """ "bytes" as before; "transferred_bytes" (the same) and "plaintext_bytes" name both sizes."""
        return {
            "files": self.files,
            "bytes": self.bytes,
            "transferred_bytes": self.bytes,
            "plaintext_bytes": self.plain_bytes,
        }


@dataclass(frozen=True)
class DatasetStatus:
    """One dataset: its totals, its four dates (ISO-8601 UTC strings as stored, or None) and a count for
    every status in STATUSES order."""

    dataset_id: str
    n_files: int
    n_bytes: int
    date_requested: str | None
    date_download_start: str | None
    date_download_end: str | None
    date_processing_end: str | None
    by_status: dict[str, Count]

    @property
    def dates(self) -> tuple[str | None, ...]:
        """The four dates in DATASET_DATES order."""
        return tuple(getattr(self, k) for k in DATASET_DATES)

    def times(self) -> tuple[datetime | None, ...]:
        """The four dates parsed (see parse_time), in DATASET_DATES order."""
        return tuple(parse_time(d) for d in self.dates)

    def count(self, status: str) -> Count:
        return self.by_status.get(status, Count())

    @property
    def plain_bytes(self) -> int:
        """Plaintext size of the dataset's files whose plaintext size is known (the archived ones)."""
        return sum(c.plain_bytes for c in self.by_status.values())

    def to_json(self) -> dict[str, Any]:
        """ "n_bytes" (the transferred size) as before, then "transferred_bytes" and "plaintext_bytes"."""
        out: dict[str, Any] = {"dataset_id": self.dataset_id, "n_files": self.n_files, "n_bytes": self.n_bytes}
        out.update(transferred_bytes=self.n_bytes, plaintext_bytes=self.plain_bytes)
        out.update(zip(DATASET_DATES, self.dates, strict=True))
        out["by_status"] = {s: c.to_json() for s, c in self.by_status.items()}
        return out


@dataclass(frozen=True)
class FileStatus:
    """One registered file as `status` lists it (field order is the JSON's key order)."""

    file_id: str
    file_number: int | None  # registration number: array task branch of branches takes branch + branches*n
    dataset_id: str
    file_name: str
    status: str
    size: int | None  # the transferred size: bytes of the file as received (encrypted)
    plain_size: int | None  # the plaintext size, known once archived
    archive_path: str | None
    md5: str | None
    sha256: str | None
    archive_checksum: str | None
    archive_checksum_type: str | None
    error: str | None
    attempts: int | None
    updated_at: str | None

    def to_json(self) -> dict[str, Any]:
        """The former keys ("size" is the transferred size), with "transferred_bytes" and "plaintext_bytes"
        after "size"."""
        out: dict[str, Any] = {}
        for k, v in dataclasses.asdict(self).items():
            if k == "plain_size":
                continue
            out[k] = v
            if k == "size":
                out.update(transferred_bytes=self.size, plaintext_bytes=self.plain_size)
        return out


FILE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(FileStatus))
_OPTIONAL = ("plain_size", "file_number")


def _file_status(row: Mapping[str, Any]) -> FileStatus:
    """A file row as FileStatus; a row without plain_size or file_number (an older caller's) has it unknown."""
    values: dict[str, Any] = {k: row.get(k) if k in _OPTIONAL else row[k] for k in FILE_FIELDS}
    return FileStatus(**values)


class StatusRows(Protocol):
    """What the read model needs from the database layer (legampi.db.Database has it)."""

    def datasets(self, dataset_id: str | None = None) -> list[dict[str, Any]]: ...

    def status_counts(self, dataset_id: str | None = None) -> list[dict[str, Any]]: ...

    def files(self, dataset_id: str | None = None) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class ArchiveStatus:
    """Every dataset's counts and dates, and every file's status: what `status` prints and `report` draws."""

    datasets: list[DatasetStatus]
    files: list[FileStatus]

    @classmethod
    def from_rows(
        cls,
        datasets: Iterable[Mapping[str, Any]],
        counts: Iterable[Mapping[str, Any]],
        files: Iterable[Mapping[str, Any]] = (),
    ) -> ArchiveStatus:
        """DATASETS: dataset_log rows; COUNTS: (dataset_id, status, files, bytes[, plain_bytes]) rows, one per
        dataset and status that has files; FILES: file rows (extra columns are ignored; a missing plain_size
        is unknown). A status without files counts 0."""
        by_dataset: dict[str, dict[str, Count]] = {}
        for r in counts:
            by_dataset.setdefault(r["dataset_id"], {})[r["status"]] = Count(
                int(r["files"]), int(r["bytes"]), int(r.get("plain_bytes") or 0)
            )
        return cls(
            [
                DatasetStatus(
                    dataset_id=d["dataset_id"],
                    n_files=d["n_files"],
                    n_bytes=d["n_bytes"],
                    **{k: d[k] for k in DATASET_DATES},
                    by_status={s: by_dataset.get(d["dataset_id"], {}).get(s, Count()) for s in STATUSES},
                )
                for d in datasets
            ],
            [_file_status(f) for f in files],
        )

    @classmethod
    def read(cls, db: StatusRows, dataset: str | None = None) -> ArchiveStatus:
        """The status of one dataset, or of all of them, from the database."""
        return cls.from_rows(db.datasets(dataset), db.status_counts(dataset), db.files(dataset))

    def with_status(self, status: str) -> list[FileStatus]:
        return [f for f in self.files if f.status == status]

    def to_json(self) -> dict[str, Any]:
        """The `status --json` document (without "unregistered", which comes from the receiving folder)."""
        return {"datasets": [d.to_json() for d in self.datasets], "files": [f.to_json() for f in self.files]}


@dataclass(frozen=True)
class FolderCount:
    """Files and bytes in one workspace folder (a `count` row)."""

    workspace: str
    files: int
    bytes: int
    folder: str

    @classmethod
    def of(cls, workspace: str, folder: Path, sizes: Iterable[int]) -> FolderCount:
        sizes = list(sizes)
        return cls(workspace, len(sizes), sum(sizes), str(folder))


@dataclass(frozen=True)
class Arrivals:
    """`track compare`: the files recorded in receiving at `track start`, and those whose archive name was
    not in the archive at `track end`."""

    received: list[str]
    lost: list[str]

    @property
    def arrived(self) -> int:
        return len(self.received) - len(self.lost)

    @classmethod
    def compare(cls, received: Sequence[str], archived: Iterable[str], archive_name: Callable[[str], str]) -> Arrivals:
        """ARCHIVE_NAME maps a name in receiving to its name in the archive (extensions change)."""
        present = set(archived)
        return cls(list(received), [n for n in received if archive_name(n) not in present])
