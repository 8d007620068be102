"""Files and datasets: the rows `status`, `report`, planning and recovery read, and the dataset totals
and dates every write keeps true.

``file_rows``, ``dataset_rows`` and ``file_row`` return typed rows (legampi.db.rows); ``files`` and
``datasets`` return dicts, optionally of a few columns (rank 0 holds one row per file: keep them small).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

from ..status import DATASET_DATES, STATUSES
from .connection import Connection, chunks, marks, now
from .rows import DATASET_COLUMNS, FILE_COLUMNS, DatasetRow, Event, FileRow


class FilesMixin(Connection):
    """Queries over the file, dataset_log and file_event tables."""

    def files(
        self,
        dataset_id: str | None = None,
        status: str | None = None,
        names: Sequence[str] | None = None,
        file_ids: Sequence[str] | None = None,
        columns: Sequence[str] = FILE_COLUMNS,
    ) -> list[dict[str, Any]]:
        """File rows, optionally only some COLUMNS (rank 0 holds one row per file: keep them small)."""
        unknown = set(columns) - set(FILE_COLUMNS)
        if unknown:
            raise ValueError(f"unknown file columns {sorted(unknown)}")
        where, params = [], []
        if dataset_id is not None:
            where.append("dataset_id = ?")
            params.append(dataset_id)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        base = f"SELECT {','.join(columns)} FROM file"
        if names is None and file_ids is None:
            sql = base + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY dataset_id, file_name"
            return self.query(sql, params)
        key, values = ("file_name", names) if names is not None else ("file_id", file_ids)
        out: list[dict[str, Any]] = []
        for chunk in chunks(list(values or ()), 500):
            cond = where + [f"{key} IN ({marks(len(chunk))})"]
            out += self.query(base + " WHERE " + " AND ".join(cond), params + list(chunk))
        return out

    def file_rows(
        self,
        dataset_id: str | None = None,
        status: str | None = None,
        names: Sequence[str] | None = None,
        file_ids: Sequence[str] | None = None,
    ) -> list[FileRow]:
        """Like ``files`` (same filters and order), every column, as typed rows."""
        return [FileRow.from_dict(r) for r in self.files(dataset_id, status, names, file_ids)]

    def file_row(self, file_id: str) -> FileRow | None:
        """One file by id, or None when no such file is registered."""
        rows = self.file_rows(file_ids=[file_id])
        return rows[0] if rows else None

    def unfinished_files(self, columns: Sequence[str] = FILE_COLUMNS) -> list[dict[str, Any]]:
        """Files not yet `available`: what recovery has to look at."""
        if set(columns) - set(FILE_COLUMNS):
            raise ValueError(f"unknown file columns {sorted(set(columns) - set(FILE_COLUMNS))}")
        return self.query(f"SELECT {','.join(columns)} FROM file WHERE status <> 'available'")

    def datasets(self, dataset_id: str | None = None) -> list[dict[str, Any]]:
        """Dataset rows (DATASET_COLUMNS), by dataset id."""
        sql = f"SELECT {','.join(DATASET_COLUMNS)} FROM dataset_log"
        if dataset_id is not None:
            return self.query(sql + " WHERE dataset_id = ?", (dataset_id,))
        return self.query(sql + " ORDER BY dataset_id")

    def dataset_rows(self, dataset_id: str | None = None) -> list[DatasetRow]:
        """Like ``datasets``, as typed rows."""
        return [DatasetRow.from_dict(r) for r in self.datasets(dataset_id)]

    def status_counts(self, dataset_id: str | None = None) -> list[dict[str, Any]]:
        """Files and bytes per (dataset, status): the status read model's counts (bytes: the transferred
        size; plain_bytes: the plaintext size of those whose plaintext size is known)."""
        sql = (
            "SELECT dataset_id, status, count(*) AS files, coalesce(sum(size), 0) AS bytes, "
            "coalesce(sum(plain_size), 0) AS plain_bytes FROM file"
            + (" WHERE dataset_id = ?" if dataset_id else "")
            + " GROUP BY dataset_id, status"
        )
        return self.query(sql, (dataset_id,) if dataset_id else ())

    def events(
        self, file_id: str | None = None, dataset_id: str | None = None, event: str | None = None
    ) -> list[dict[str, Any]]:
        """The audit log in the order it was written, optionally of one file, dataset or event kind."""
        where, params = [], []
        for col, val in (("file_id", file_id), ("dataset_id", dataset_id), ("event", event)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        sql = "SELECT id, file_id, dataset_id, event, status, details, job_id, at FROM file_event"
        return self.query(sql + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id", params)

    def archived_timeline(self, dataset_id: str | None = None) -> list[dict[str, Any]]:
        """When each file became available, with its size: the report's timeline."""
        sql = (
            "SELECT e.at, coalesce(f.size, 0) AS bytes, e.dataset_id FROM file_event e JOIN file f "
            "ON f.file_id = e.file_id WHERE e.event = 'available'"
        )
        if dataset_id is not None:
            return self.query(sql + " AND e.dataset_id = ? ORDER BY e.at", (dataset_id,))
        return self.query(sql + " ORDER BY e.at")

    def refresh_dataset_totals(self, dataset_ids: Iterable[str]) -> None:
        """n_files/n_bytes are derived from the file table so they are always the true totals."""
        for ds in sorted(set(dataset_ids)):
            self.execute(
                "UPDATE dataset_log SET n_files = (SELECT count(*) FROM file WHERE dataset_id = ?), "
                "n_bytes = (SELECT coalesce(sum(size), 0) FROM file WHERE dataset_id = ?) "
                "WHERE dataset_id = ?",
                (ds, ds, ds),
            )

    def stamp_dataset(
        self,
        dataset_ids: Iterable[str],
        column: str,
        at: str | None = None,
        only_if_null: bool = True,
        when_no_status_in: Sequence[str] = (),
    ) -> list[str]:
        """Set one of the four dataset dates; optionally only once every file has left the given statuses."""
        if column not in DATASET_DATES:
            raise ValueError(f"unknown dataset date {column!r}")
        at = at or now()
        stamped = []
        for ds in sorted(set(dataset_ids)):
            sql = f"UPDATE dataset_log SET {column} = ? WHERE dataset_id = ?"
            params: list[Any] = [at, ds]
            if only_if_null:
                sql += f" AND {column} IS NULL"
            if when_no_status_in:
                sql += (
                    f" AND NOT EXISTS (SELECT 1 FROM file WHERE dataset_id = ? AND status IN "
                    f"({marks(len(when_no_status_in))}))"
                )
                params += [ds, *when_no_status_in]
            if self.execute(sql, params).rowcount:
                stamped.append(ds)
        return stamped

    def set_status(
        self,
        file_id: str,
        status: str,
        event: str,
        details: str | None = None,
        job_id: str | None = None,
        error: str | None = None,
    ) -> dict[str, Any]:
        """Manual or single status change, recorded as an event; returns the row as it was (a dict, as
        ``files`` gives; KeyError for an unknown file)."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        with self.transaction():
            row = self.file_row(file_id)
            if row is None:
                raise KeyError(file_id)
            ts = now()
            self.execute(
                "UPDATE file SET status = ?, error = ?, claimed_by = NULL, claimed_at = NULL, "
                "updated_at = ? WHERE file_id = ?",
                (status, error, ts, file_id),
            )
            self.add_events([Event(file_id, row.dataset_id, event, status, details)], job_id, ts)
            if status == "available":
                self.stamp_dataset(
                    [row.dataset_id], "date_processing_end", ts, when_no_status_in=STATUSES[:3] + ("failed",)
                )
        return asdict(row)
