"""The report's input: gathered from the tracking database (``collect``), then checked (``ReportData.check``).

``collect`` returns a plain dict (JSON-like, so a report can also be drawn from data saved elsewhere);
``ReportData.check`` validates that dict once, naming the field at fault, and gives every section of the
page typed rows to draw from.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Protocol

from .status import DATASET_DATES, ArchiveStatus, Count, DatasetStatus, StatusRows, parse_time

AUDIT_RESULTS = ("ok", "mismatch", "missing", "unexpected")


# ---------------------------------------------------------------- checking single values


def _get(row: Mapping[str, Any], key: str, where: str) -> Any:
    """Fetch a required key so a malformed ``data`` dict fails naming the field, not with a bare KeyError."""
    if not isinstance(row, Mapping):
        raise ValueError(f"report data: {where} must be a mapping, got {type(row).__name__}")
    if key not in row:
        raise ValueError(f"report data: {where} has no {key!r}")
    return row[key]


def _int(value: Any, where: str) -> int:
    """Counts and byte sizes; PostgreSQL SUM() of BIGINT arrives as Decimal, which is accepted if integral."""
    if isinstance(value, bool):
        raise ValueError(f"report data: {where} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, (Decimal, float)) and value == int(value):
        return int(value)
    raise ValueError(f"report data: {where} must be an integer, got {value!r}")


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ValueError(f"report data: {where} must be a number, got {value!r}")
    return float(value)


def _ts(value: Any, where: str) -> datetime | None:
    """An ISO-8601 timestamp or None (see status.parse_time)."""
    if value is not None and not isinstance(value, str):
        raise ValueError(f"report data: {where} must be an ISO-8601 string or None, got {value!r}")
    try:
        return parse_time(value)
    except ValueError as exc:
        raise ValueError(f"report data: {where} is not an ISO-8601 timestamp: {value!r}") from exc


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"report data: {key!r} must be a list, got {type(value).__name__}")
    return list(value)


# ---------------------------------------------------------------- checked rows


@dataclass(frozen=True)
class RankFigures:
    """What one rank did in one run."""

    rank: int
    host: str
    files: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class Run:
    """One `process` job; SECONDS is None while it runs or when a time is unknown."""

    job_id: str
    start: datetime | None
    end: datetime | None
    files: int
    bytes: int
    failed: int
    ranks: list[RankFigures]

    @property
    def seconds(self) -> float | None:
        return (self.end - self.start).total_seconds() if self.start and self.end else None


@dataclass(frozen=True)
class ArchivedFile:
    """A file that became available: when (POSIX seconds), its size, its dataset."""

    at: float
    bytes: int
    dataset_id: str


@dataclass(frozen=True)
class ArchivedCopy:
    """An available file and where it lives: ARCHIVE_PATH is a folder path or ``s3://bucket/key``."""

    file_id: str
    dataset_id: str
    file_name: str
    size: int | None
    archive_path: str | None


@dataclass(frozen=True)
class FailedFile:
    file_id: str
    dataset_id: str
    file_name: str
    error: str | None
    updated_at: datetime | None


@dataclass(frozen=True)
class Audit:
    at: datetime | None
    file_id: str
    dataset_id: str
    result: str
    details: str


def _dataset(ds: Mapping[str, Any], where: str) -> DatasetStatus:
    by_status_raw = _get(ds, "by_status", where) or {}
    if not isinstance(by_status_raw, Mapping):
        raise ValueError(f"report data: {where}.by_status must be a mapping")
    by_status: dict[str, Count] = {}
    for status, counts in by_status_raw.items():
        w = f"{where}.by_status[{status!r}]"
        by_status[str(status)] = Count(
            _int(_get(counts, "files", w), f"{w}.files"),
            _int(_get(counts, "bytes", w), f"{w}.bytes"),
            _int(counts.get("plaintext_bytes", 0), f"{w}.plaintext_bytes"),  # optional: data saved before it
        )
    dataset_id = str(_get(ds, "dataset_id", where))
    n_files = _int(_get(ds, "n_files", where), f"{where}.n_files")
    n_bytes = _int(_get(ds, "n_bytes", where), f"{where}.n_bytes")
    dates = {}
    for k in DATASET_DATES:
        dates[k] = _get(ds, k, where)
        _ts(dates[k], f"{where}.{k}")  # checked here, parsed again by DatasetStatus.times()
    return DatasetStatus(dataset_id, n_files, n_bytes, **dates, by_status=by_status)


def _run(r: Mapping[str, Any], where: str) -> Run:
    start = _ts(_get(r, "started_at", where), f"{where}.started_at")
    end = _ts(_get(r, "ended_at", where), f"{where}.ended_at")
    ranks = []
    for j, rk in enumerate(_get(r, "ranks", where) or []):
        w = f"{where}.ranks[{j}]"
        ranks.append(
            RankFigures(
                rank=_int(_get(rk, "rank", w), f"{w}.rank"),
                host=str(_get(rk, "host", w)),
                files=_int(_get(rk, "files", w), f"{w}.files"),
                bytes=_int(_get(rk, "bytes", w), f"{w}.bytes"),
                seconds=_float(_get(rk, "seconds", w), f"{w}.seconds"),
            )
        )
    return Run(
        job_id=str(_get(r, "job_id", where)),
        start=start,
        end=end,
        files=_int(_get(r, "files", where), f"{where}.files"),
        bytes=_int(_get(r, "bytes", where), f"{where}.bytes"),
        failed=_int(_get(r, "failed", where), f"{where}.failed"),
        ranks=sorted(ranks, key=lambda x: x.rank),
    )


def _audit(a: Mapping[str, Any], where: str) -> Audit:
    result = str(_get(a, "result", where))
    if result not in AUDIT_RESULTS:
        raise ValueError(f"report data: {where}.result must be one of {', '.join(AUDIT_RESULTS)}, got {result!r}")
    at = _ts(_get(a, "at", where), f"{where}.at")
    details = _get(a, "details", where)
    return Audit(
        at,
        str(_get(a, "file_id", where)),
        str(_get(a, "dataset_id", where)),
        result,
        "" if details is None else str(details),
    )


def _archived(a: Mapping[str, Any], where: str) -> ArchivedFile:
    at = _ts(_get(a, "at", where), f"{where}.at")
    if at is None:
        raise ValueError(f"report data: {where}.at is None; an archived file must have a time")
    return ArchivedFile(
        at.timestamp(), _int(_get(a, "bytes", where), f"{where}.bytes"), str(_get(a, "dataset_id", where))
    )


def _copy(f: Mapping[str, Any], where: str) -> ArchivedCopy:
    file_id, dataset_id, file_name = (str(_get(f, k, where)) for k in ("file_id", "dataset_id", "file_name"))
    size, path = _get(f, "size", where), _get(f, "archive_path", where)
    return ArchivedCopy(
        file_id,
        dataset_id,
        file_name,
        None if size is None else _int(size, f"{where}.size"),
        None if path in (None, "") else str(path),
    )


def _failed(f: Mapping[str, Any], where: str) -> FailedFile:
    updated_at = _ts(_get(f, "updated_at", where), f"{where}.updated_at")
    error = _get(f, "error", where)
    return FailedFile(
        str(_get(f, "file_id", where)),
        str(_get(f, "dataset_id", where)),
        str(_get(f, "file_name", where)),
        None if error in (None, "") else str(error),
        updated_at,
    )


def _newest_first(t: datetime | None) -> float:
    return t.timestamp() if t else float("-inf")


@dataclass(frozen=True)
class ReportData:
    """The report's input, checked: runs oldest first, archived files in time order, failures and audits
    newest first, archived copies by dataset and name (absent from data saved before they were gathered)."""

    title: str
    generated_at: datetime | None
    datasets: list[DatasetStatus]
    runs: list[Run]
    failed: list[FailedFile]
    audits: list[Audit]
    archived: list[ArchivedFile]
    audit_counts: Counter[str] = field(default_factory=Counter)
    copies: list[ArchivedCopy] = field(default_factory=list)

    @classmethod
    def check(cls, data: Mapping[str, Any]) -> ReportData:
        """Validate the plain dict ``collect`` returns; a ValueError names the first field at fault."""
        if not isinstance(data, Mapping):
            raise ValueError(f"report data must be a mapping, got {type(data).__name__}")
        title = str(data.get("title") or "legampi archive report")
        generated = _ts(data.get("generated_at"), "generated_at")
        datasets = [_dataset(ds, f"datasets[{i}]") for i, ds in enumerate(_list(data, "datasets"))]
        runs = [_run(r, f"runs[{i}]") for i, r in enumerate(_list(data, "runs"))]
        runs.sort(key=lambda r: (r.start is None, r.start or datetime.min.replace(tzinfo=timezone.utc)))
        failed_raw = _list(data, "failed")
        audits = [_audit(a, f"audits[{i}]") for i, a in enumerate(_list(data, "audits"))]
        archived = [_archived(a, f"archived[{i}]") for i, a in enumerate(_list(data, "archived"))]
        archived.sort(key=lambda e: e.at)
        failed = [_failed(f, f"failed[{i}]") for i, f in enumerate(failed_raw)]
        failed.sort(key=lambda f: _newest_first(f.updated_at), reverse=True)
        counts = Counter(a.result for a in audits)
        audits.sort(key=lambda a: _newest_first(a.at), reverse=True)
        copies = [_copy(f, f"archived_files[{i}]") for i, f in enumerate(_list(data, "archived_files"))]
        copies.sort(key=lambda c: (c.dataset_id, c.file_name))
        return cls(title, generated, datasets, runs, failed, audits, archived, counts, copies)


# ---------------------------------------------------------------- gathering from the database


class ReportRows(StatusRows, Protocol):
    """What ``collect`` needs from the database layer (legampi.db.Database has it)."""

    def jobs(self, limit: int = 20) -> list[dict[str, Any]]: ...

    def job_ranks(self, job_ids: list[str]) -> list[dict[str, Any]]: ...

    def job_failures(self, job_ids: list[str]) -> dict[str, int]: ...

    def events(self, file_id: str | None = None, dataset_id: str | None = None) -> list[dict[str, Any]]: ...

    def archived_timeline(self, dataset_id: str | None = None) -> list[dict[str, Any]]: ...


def _run_rows(db: ReportRows, runs: int) -> list[dict[str, Any]]:
    jobs = [j for j in db.jobs(runs) if j["command"] == "process"]
    ranks: dict[str, list[dict[str, Any]]] = {}
    for r in db.job_ranks([j["job_id"] for j in jobs]):
        ranks.setdefault(r["job_id"], []).append(
            {"rank": r["rank"], "host": r["host"], "files": r["files"], "bytes": r["bytes"], "seconds": r["seconds"]}
        )
    failures = db.job_failures([j["job_id"] for j in jobs])
    out = []
    for j in jobs:
        rr = ranks.get(j["job_id"], [])
        out.append(
            {
                "job_id": j["job_id"],
                "started_at": j["started_at"],
                "ended_at": j["ended_at"],
                "files": sum(x["files"] for x in rr),
                "bytes": sum(x["bytes"] for x in rr),
                "failed": failures.get(j["job_id"], 0),
                "ranks": rr,
            }
        )
    return out


def collect(db: ReportRows, dataset: str | None = None, runs: int = 10) -> dict[str, Any]:
    """Gather the report's data from the tracking database (the shape ReportData.check takes)."""
    status = ArchiveStatus.read(db, dataset)
    failed = [
        {
            "file_id": f.file_id,
            "dataset_id": f.dataset_id,
            "file_name": f.file_name,
            "error": f.error,
            "updated_at": f.updated_at,
        }
        for f in status.with_status("failed")
    ]
    audits = [
        {
            "at": e["at"],
            "file_id": e["file_id"] or "",
            "dataset_id": e["dataset_id"] or "",
            "result": e["event"].removeprefix("audit-"),
            "details": e["details"] or "",
        }
        for e in db.events(dataset_id=dataset)
        if e["event"].startswith("audit-")
    ]
    return {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "title": "legampi archive report" + (f": dataset {dataset}" if dataset else ""),
        "datasets": [d.to_json() for d in status.datasets],
        "archived": db.archived_timeline(dataset),
        "runs": _run_rows(db, runs),
        "failed": failed,
        "audits": audits,
        "archived_files": [
            {k: getattr(f, k) for k in ("file_id", "dataset_id", "file_name", "size", "archive_path")}
            for f in status.with_status("available")
        ],
    }
