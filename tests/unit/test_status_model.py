"""legampi.status: the read model built from plain rows (no database), its JSON, folder counts and arrivals."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from legampi.status import (
    DATASET_DATES,
    FILE_FIELDS,
    STATUSES,
    ArchiveStatus,
    Arrivals,
    Count,
    FolderCount,
    parse_time,
)


def dataset_row(dataset_id: str, n_files: int, n_bytes: int, **dates: str | None) -> dict[str, Any]:
    return {
        "dataset_id": dataset_id,
        "n_files": n_files,
        "n_bytes": n_bytes,
        **{k: dates.get(k) for k in DATASET_DATES},
    }


def file_row(file_id: str, dataset_id: str, status: str, size: int | None = 10, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {k: None for k in FILE_FIELDS}
    row.update(file_id=file_id, dataset_id=dataset_id, file_name=file_id, status=status, size=size, attempts=0)
    row.update(extra)
    return row


DATASETS = [
    dataset_row("EGAD1", 3, 5_000_000_000_007, date_requested="2024-01-01T00:00:00.000000+00:00"),
    dataset_row("EGAD2", 1, 0),
]
COUNTS = [
    {"dataset_id": "EGAD1", "status": "available", "files": 2, "bytes": 5_000_000_000_000},
    {"dataset_id": "EGAD1", "status": "failed", "files": 1, "bytes": 7},
    {"dataset_id": "EGAD2", "status": "pending", "files": 1, "bytes": 0},
]
FILES = [
    file_row("a.c4gh", "EGAD1", "available", 5_000_000_000_000, archive_path="/arch/a.c4gh", claimed_by="job"),
    file_row("b.c4gh", "EGAD1", "failed", 7, error="md5 mismatch"),
    file_row("z.c4gh", "EGAD2", "pending", None),
]


def test_the_status_names_are_the_lifecycle_order() -> None:
    assert STATUSES == ("pending", "received", "processing", "available", "failed")
    assert DATASET_DATES == ("date_requested", "date_download_start", "date_download_end", "date_processing_end")


def test_every_status_is_counted_zero_when_a_dataset_has_none() -> None:
    status = ArchiveStatus.from_rows(DATASETS, COUNTS, FILES)
    d1, d2 = status.datasets
    assert list(d1.by_status) == list(STATUSES)
    assert d1.by_status["available"] == Count(2, 5_000_000_000_000)
    assert d1.count("received") == Count(0, 0) and d1.count("no such status") == Count()
    assert d2.count("pending").files == 1 and sum(c.files for c in d2.by_status.values()) == 1


def test_counts_of_unknown_datasets_are_ignored_and_decimal_sums_become_int() -> None:
    from decimal import Decimal

    counts = [*COUNTS, {"dataset_id": "GONE", "status": "pending", "files": 9, "bytes": 9}]
    counts[0] = {**counts[0], "files": Decimal(2), "bytes": Decimal(5_000_000_000_000)}
    status = ArchiveStatus.from_rows(DATASETS, counts)
    assert [d.dataset_id for d in status.datasets] == ["EGAD1", "EGAD2"]
    c = status.datasets[0].count("available")
    assert (c.files, c.bytes) == (2, 5_000_000_000_000) and type(c.bytes) is int
    assert status.files == []


def test_the_four_dates_in_order_and_parsed() -> None:
    d1 = ArchiveStatus.from_rows(DATASETS, COUNTS).datasets[0]
    assert d1.dates == ("2024-01-01T00:00:00.000000+00:00", None, None, None)
    assert d1.times() == (datetime(2024, 1, 1, tzinfo=timezone.utc), None, None, None)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2024-01-01T02:00:00Z", datetime(2024, 1, 1, 2, tzinfo=timezone.utc)),
        ("2024-01-01T02:00:00", datetime(2024, 1, 1, 2, tzinfo=timezone.utc)),  # naive is UTC
        ("2024-01-01T03:00:00+01:00", datetime(2024, 1, 1, 2, tzinfo=timezone.utc)),
        (None, None),
    ],
)
def test_parse_time(text: str | None, expected: datetime | None) -> None:
    assert parse_time(text) == expected


def test_parse_time_refuses_what_is_not_a_timestamp() -> None:
    with pytest.raises(ValueError):
        parse_time("yesterday")


def test_json_is_the_status_command_document() -> None:
    """Key order and values as `legampi status --json` has always printed them."""
    status = ArchiveStatus.from_rows(DATASETS, COUNTS, FILES)
    doc = status.to_json()
    assert list(doc) == ["datasets", "files"]
    d1 = doc["datasets"][0]
    assert list(d1) == [
        "dataset_id",
        "n_files",
        "n_bytes",
        "transferred_bytes",
        "plaintext_bytes",
        *DATASET_DATES,
        "by_status",
    ]
    assert d1["by_status"] == {
        "pending": {"files": 0, "bytes": 0, "transferred_bytes": 0, "plaintext_bytes": 0},
        "received": {"files": 0, "bytes": 0, "transferred_bytes": 0, "plaintext_bytes": 0},
        "processing": {"files": 0, "bytes": 0, "transferred_bytes": 0, "plaintext_bytes": 0},
        "available": {
            "files": 2,
            "bytes": 5_000_000_000_000,
            "transferred_bytes": 5_000_000_000_000,
            "plaintext_bytes": 0,
        },
        "failed": {"files": 1, "bytes": 7, "transferred_bytes": 7, "plaintext_bytes": 0},
    }
    f = doc["files"][0]
    assert list(f) == [
        "file_id",
        "file_number",
        "dataset_id",
        "file_name",
        "status",
        "size",
        "transferred_bytes",
        "plaintext_bytes",
        "archive_path",
        "md5",
        "sha256",
        "archive_checksum",
        "archive_checksum_type",
        "error",
        "attempts",
        "updated_at",
    ]
    assert "claimed_by" not in f and f["archive_path"] == "/arch/a.c4gh"
    assert json.loads(json.dumps(doc)) == doc


def test_json_matches_the_former_hand_built_document() -> None:
    """The dict `cli.status_data` built before the read model existed, rebuilt here from the same rows."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for r in COUNTS:
        counts.setdefault(r["dataset_id"], {})[r["status"]] = {"files": int(r["files"]), "bytes": int(r["bytes"])}
    datasets = [dict(d) for d in DATASETS]
    for d in datasets:
        d["by_status"] = {s: counts.get(d["dataset_id"], {}).get(s, {"files": 0, "bytes": 0}) for s in STATUSES}
    files = [{k: f[k] for k in FILE_FIELDS if k != "plain_size"} for f in FILES]
    former = json.loads(json.dumps({"datasets": datasets, "files": files}, default=str))
    added = ("transferred_bytes", "plaintext_bytes")  # issue 17: both sizes named; nothing else changed

    def without_added(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: without_added(v) for k, v in obj.items() if k not in added}
        if isinstance(obj, list):
            return [without_added(v) for v in obj]
        return obj

    doc = json.loads(json.dumps(ArchiveStatus.from_rows(DATASETS, COUNTS, FILES).to_json(), default=str))
    assert json.dumps(without_added(doc), indent=2) == json.dumps(former, indent=2)


def test_files_with_a_status() -> None:
    status = ArchiveStatus.from_rows(DATASETS, COUNTS, FILES)
    assert [f.file_id for f in status.with_status("failed")] == ["b.c4gh"]
    assert status.with_status("received") == []


class Rows:
    """The three queries the model reads, answered from lists (a stand-in for legampi.db.Database)."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None]] = []

    def datasets(self, dataset_id: str | None = None) -> list[dict[str, Any]]:
        self.asked.append(("datasets", dataset_id))
        return [d for d in DATASETS if dataset_id in (None, d["dataset_id"])]

    def status_counts(self, dataset_id: str | None = None) -> list[dict[str, Any]]:
        self.asked.append(("status_counts", dataset_id))
        return [c for c in COUNTS if dataset_id in (None, c["dataset_id"])]

    def files(self, dataset_id: str | None = None) -> list[dict[str, Any]]:
        self.asked.append(("files", dataset_id))
        return [f for f in FILES if dataset_id in (None, f["dataset_id"])]


def test_read_asks_for_one_dataset() -> None:
    rows = Rows()
    status = ArchiveStatus.read(rows, "EGAD2")
    assert rows.asked == [("datasets", "EGAD2"), ("status_counts", "EGAD2"), ("files", "EGAD2")]
    assert [d.dataset_id for d in status.datasets] == ["EGAD2"] and [f.file_id for f in status.files] == ["z.c4gh"]


def test_folder_count() -> None:
    c = FolderCount.of("receiving", Path("/data/in"), [3, 4, 0])
    assert (c.workspace, c.files, c.bytes, c.folder) == ("receiving", 3, 7, "/data/in")
    assert FolderCount.of("quarantine", Path("/q"), iter(())) == FolderCount("quarantine", 0, 0, "/q")


def test_arrivals_compare_by_archive_name() -> None:
    arrivals = Arrivals.compare(
        ["a.bam.gpg", "b.bam.gpg", "c.txt"], ["a.bam.c4gh", "c.txt.c4gh"], lambda n: n.removesuffix(".gpg") + ".c4gh"
    )
    assert arrivals.lost == ["b.bam.gpg"] and arrivals.arrived == 2 and len(arrivals.received) == 3
    nothing = Arrivals.compare([], ["x"], str)
    assert (nothing.arrived, nothing.lost) == (0, [])


def test_both_sizes_are_named_transferred_and_plaintext() -> None:
    """Issue 17: `size` is the transferred size (encrypted, as received), `plain_size` the plaintext size;
    the JSON names both next to the former keys."""
    counts = [{"dataset_id": "EGAD1", "status": "available", "files": 1, "bytes": 1100, "plain_bytes": 1000}]
    files = [file_row("a.c4gh", "EGAD1", "available", 1100, plain_size=1000)]
    status = ArchiveStatus.from_rows([dataset_row("EGAD1", 1, 1100)], counts, files)
    d = status.datasets[0]
    assert d.count("available") == Count(1, 1100, 1000) and d.plain_bytes == 1000
    doc = status.to_json()
    assert (doc["datasets"][0]["n_bytes"], doc["datasets"][0]["transferred_bytes"]) == (1100, 1100)
    assert doc["datasets"][0]["plaintext_bytes"] == 1000
    assert doc["datasets"][0]["by_status"]["available"] == {
        "files": 1,
        "bytes": 1100,
        "transferred_bytes": 1100,
        "plaintext_bytes": 1000,
    }
    f = doc["files"][0]
    assert (f["size"], f["transferred_bytes"], f["plaintext_bytes"]) == (1100, 1100, 1000)
    assert "plain_size" not in f


def test_rows_without_plain_size_still_read() -> None:
    """Rows from an older caller (no plain_size column, no plain_bytes count) read as unknown / 0."""
    row = {k: v for k, v in file_row("a.c4gh", "EGAD1", "pending").items() if k != "plain_size"}
    status = ArchiveStatus.from_rows([dataset_row("EGAD1", 1, 10)], COUNTS[:1], [row])
    assert status.files[0].plain_size is None and status.datasets[0].count("available").plain_bytes == 0
