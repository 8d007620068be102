"""Results: what a job learned about its files, written back in batches (one transaction each)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from .connection import chunks, marks, now
from .files import FilesMixin
from .jobs import JobsMixin
from .rows import Event


class Result(Protocol):
    """What ``record_results`` reads of one file's outcome (legampi.stream.FileResult has it)."""

    @property
    def file_id(self) -> str: ...
    @property
    def status(self) -> str: ...  # 'available' or 'failed'
    @property
    def md5(self) -> str | None: ...
    @property
    def sha256(self) -> str | None: ...
    @property
    def archive_path(self) -> str | None: ...
    @property
    def archive_checksum(self) -> str | None: ...
    @property
    def archive_checksum_type(self) -> str | None: ...
    @property
    def archive_key(self) -> str | None: ...
    @property
    def plain_size(self) -> int | None: ...
    @property
    def archive_size(self) -> int | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def error_kind(self) -> str | None: ...
    @property
    def bytes_read(self) -> int: ...
    @property
    def seconds(self) -> float: ...
    @property
    def host(self) -> str: ...
    @property
    def rank(self) -> int: ...


R = TypeVar("R", bound=Result)


class ResultsMixin(JobsMixin, FilesMixin):
    """record_results (process, recovery) and record_rekeys (rekey)."""

    def record_results(self, results: Sequence[R], job_id: str | None, events: Sequence[Event] = ()) -> list[R]:
        """Write a batch of FileResults in one transaction; returns those recorded as available.

        Only rows still claimed by this job are updated (a released or re-claimed file is not overwritten).
        EVENTS (e.g. the previous batch's `source-removed`) are appended in the same transaction: one
        commit, so one log flush (fsync) per batch instead of two.
        """
        if not results:
            if events:
                self.add_events(events, job_id)
            return []
        ts = now()
        with self.transaction():
            self.add_events(events, job_id, ts)
            ids = [x.file_id for x in results]
            rows = {r["file_id"]: r for r in self.files(file_ids=ids, columns=("file_id", "dataset_id", "claimed_by"))}
            ok = [
                x for x in results if x.file_id in rows and (job_id is None or rows[x.file_id]["claimed_by"] == job_id)
            ]
            # (the claims are read first, not filtered in the UPDATE: PostgreSQL's statistics from before
            # the claims say no row has this claimed_by, and it then plans a nested loop over VALUES)
            for chunk in chunks(ok, 200):
                ph = ",".join(["(" + marks(len(_RESULT_COLUMNS)) + ")"] * len(chunk))
                keyed, keys = self.key_filter("file", "file_id", [x.file_id for x in chunk])
                self.execute(
                    f"UPDATE file SET {_RESULT_SETS}, md5 = coalesce(file.md5, CAST(v.column3 AS TEXT)), "
                    f"sha256 = coalesce(file.sha256, CAST(v.column4 AS TEXT)), "
                    f"claimed_by = NULL, claimed_at = NULL, updated_at = ? FROM (VALUES {ph}) AS v "
                    f"WHERE file.file_id = v.column1{keyed}",
                    [ts, *(v for x in chunk for v in _result_values(x)), *keys],
                )
            dataset_of = {x.file_id: rows[x.file_id]["dataset_id"] for x in ok}
            self.add_events(
                [Event(x.file_id, dataset_of[x.file_id], x.status, x.status, _result_details(x)) for x in ok],
                job_id,
                ts,
            )
            datasets = {dataset_of[x.file_id] for x in ok if x.status == "available"}
            self.stamp_dataset(
                datasets, "date_processing_end", ts, when_no_status_in=("pending", "received", "processing", "failed")
            )
            if job_id is not None:
                self.job_heartbeat(job_id)
        return [x for x in ok if x.status == "available"]

    def record_rekeys(self, rows: Sequence[dict[str, Any]], job_id: str | None = None) -> list[str]:
        """Point rows at their re-encrypted archive copies (one transaction); returns the file ids changed.

        A row changes only while it is still `available` with the archive checksum the rotation started
        from, so a concurrent change to the file is never overwritten. Each row dict has file_id,
        dataset_id, old_checksum, new_checksum, new_key, archive_size and details (the event text).
        """
        ts = now()
        done: list[dict[str, Any]] = []
        with self.transaction():
            for r in rows:
                cur = self.execute(
                    "UPDATE file SET archive_checksum = ?, archive_key = ?, archive_size = ?, "
                    "updated_at = ? WHERE file_id = ? AND status = 'available' AND "
                    "archive_checksum = ?",
                    (r["new_checksum"], r["new_key"], r["archive_size"], ts, r["file_id"], r["old_checksum"]),
                )
                if cur.rowcount:
                    done.append(r)
            self.add_events(
                [Event(r["file_id"], r["dataset_id"], "rekeyed", "available", r["details"]) for r in done], job_id, ts
            )
        return [r["file_id"] for r in done]


# What record_results writes, in the order of its VALUES rows (md5 and sha256 only fill a gap).
_RESULT_COLUMNS = (
    "file_id",
    "status",
    "md5",
    "sha256",
    "archive_path",
    "archive_checksum",
    "archive_checksum_type",
    "archive_key",
    "plain_size",
    "archive_size",
    "error",
)
_CASTS = {"plain_size": "BIGINT", "archive_size": "BIGINT"}
_RESULT_SETS = ", ".join(
    f"{c} = CAST(v.column{i + 1} AS {_CASTS.get(c, 'TEXT')})"
    for i, c in enumerate(_RESULT_COLUMNS)
    if c not in ("file_id", "md5", "sha256")
)


def _result_values(x: Result) -> tuple[Any, ...]:
    """One VALUES row of _RESULT_COLUMNS; a failed file's computed checksums are not recorded."""
    done = x.status == "available"
    return (
        x.file_id,
        x.status,
        x.md5 if done else None,
        x.sha256 if done else None,
        x.archive_path,
        x.archive_checksum,
        x.archive_checksum_type,
        x.archive_key,
        x.plain_size,
        x.archive_size,
        x.error,
    )


def _result_details(x: Result) -> str:
    """The event text of one result: where the copy went and how fast, or why it failed."""
    if x.status == "available":
        return (
            f"archived {x.archive_path} {x.archive_checksum_type}:{x.archive_checksum} "
            f"{x.bytes_read} bytes in {x.seconds:.3f}s on {x.host} rank {x.rank}"
        )
    text = f"{x.error_kind}: {x.error}"
    moved = getattr(x, "quarantined_to", None)  # only a failed ingest result has it
    if moved:
        text += f" (source moved to {moved})"
    return text
