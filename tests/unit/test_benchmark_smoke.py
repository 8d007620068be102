"""Benchmark smoke runs (tests/run.sh) say what ran and whether its checks passed, never "targets missed":
a smoke run on a 2-core CI machine is no measurement, targets belong to full runs and docs/benchmarks.md.
The report functions are called with made-up rows that miss every target; full runs still report them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
NAMES = (
    "bookkeeping",
    "bookkeeping_db",
    "memory",
    "rank0",
    "ingest",
    "datagen",
    "baselines",
    "memcage",
    "startup",
    "overlap",
)


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """The benchmark scripts as modules (they import each other by bare name from their folder)."""
    saved = {n: sys.modules.pop(n) for n in NAMES if n in sys.modules}
    monkeypatch.syspath_prepend(str(BENCH))
    import bookkeeping
    import memory
    import rank0

    yield SimpleNamespace(bookkeeping=bookkeeping, memory=memory, rank0=rank0)
    for n in NAMES:
        sys.modules.pop(n, None)
    sys.modules.update(saved)


def _memory_rows() -> tuple[list[dict], list[dict]]:
    workers = [
        {"label": f"w{i}", "size": size, "worker_kb": kb, "rank0_kb": 40_000, "wall": 1.0, "problems": []}
        for i, (size, kb) in enumerate(((5_000_000, 150_000), (50_000_000, 190_000)))  # 150+ MB, growing
    ]
    rank0 = [
        {"label": f"r{n}", "files": n, "rank0_kb": 40_000 + n * 10, "rank0_loop_start_kb": 39_000 + n * 5,
         "worker_kb": 46_000, "wall": 2.0, "problems": []}
        for n in (100, 600)
    ]  # fmt: skip
    return workers, rank0


def _rank0_rows() -> list[dict]:
    def row(name: str, wall: float, frac: float | None) -> dict:
        extra = {} if frac is None else {"rank0_cpu_loop": 0.5, "rank0_frac_loop": frac, "rank0_cpu_all": 0.6}
        return {"contender": name, "wall": wall, "problems": [], **extra, "rank0_frac_all": frac}

    return [row("legampi -n 3", 4.0, 0.30), row("legampi -n 2", 5.0, 0.25), row("ideal W=2", 1.0, None)]


def _bookkeeping_rows() -> list[dict]:
    return [{"db": "sqlite", "files": 300, "overall_fps": 100.0, "problems": []}]


@pytest.mark.parametrize("smoke", [True, False])
def test_memory_and_rank0_reports(bench: SimpleNamespace, capsys: pytest.CaptureFixture[str], smoke: bool) -> None:
    a = SimpleNamespace(smoke=smoke, workers=2, files=4, size_bytes=10_000_000, mode="full", db="sqlite", repeat=1)
    summaries = [bench.memory.report(a, *_memory_rows()), bench.rank0.report(a, _rank0_rows(), 40_000_000)]
    out = capsys.readouterr().out
    if smoke:
        assert "(target" not in out and "; target" not in out and "missed" not in out
        assert out.count(bench.bookkeeping.SMOKE_NOTE) == 2
        assert [s["targets"] for s in summaries] == [{}, {}]
    else:
        assert out.count("targets missed:") == 2 and "(target <= 100)" in out and "(target >= 0.85)" in out
        assert all(s["targets"] and not any(s["targets"].values()) for s in summaries)


@pytest.mark.parametrize("smoke", [True, False])
def test_bookkeeping_report(bench: SimpleNamespace, capsys: pytest.CaptureFixture[str], smoke: bool) -> None:
    a = SimpleNamespace(smoke=smoke, files=300, size_bytes=1000, workers=2, fail_on_target=True)
    code = bench.bookkeeping.report(a, _bookkeeping_rows())
    out = capsys.readouterr().out
    if smoke:
        assert code == 0 and "(target" not in out and "below target" not in out
        assert bench.bookkeeping.SMOKE_NOTE in out
    else:
        assert code == 1 and "below target (300 files/s end to end) on: sqlite" in out


@pytest.mark.parametrize("smoke", [True, False])
def test_bookkeeping_db_only_report(bench: SimpleNamespace, capsys: pytest.CaptureFixture[str], smoke: bool) -> None:
    a = SimpleNamespace(smoke=smoke, files=300, fail_on_target=True)
    rows = [{"db": "sqlite", "files": 300, "fps": 100.0, "total_s": 3.0, "problems": []}]
    code = bench.bookkeeping.report_db_only(a, rows)
    out = capsys.readouterr().out
    if smoke:
        assert code == 0 and "(target" not in out and "below target" not in out
        assert bench.bookkeeping.SMOKE_NOTE in out
    else:
        assert code == 1 and "below target (5000 files/s, database only) on: sqlite" in out


def test_bookkeeping_db_only_smoke_runs_and_checks(bench: SimpleNamespace, tmp_path: Path) -> None:
    """The database-only mode on SQLite, 50 files: every phase ran and the final state passed its checks."""
    import bookkeeping_db

    row = bookkeeping_db.run("sqlite", f"sqlite:///{tmp_path / 'b.db'}", tmp_path, 50)
    assert row["problems"] == [] and row["fps"] > 0
    assert all(row[f"{p}_s"] >= 0 for p in bookkeeping_db.PHASES) and row["monitor_passes"] == 4


def test_sidecar_reading_skips_the_provenance_line(bench: SimpleNamespace, tmp_path: Path) -> None:
    """The archive check took the provenance comment's '#' for the checksum and failed every legampi run."""
    import ingest

    out = tmp_path / "x.c4gh"
    Path(f"{out}.sha256").write_text('# legampi-provenance {"file_id": "F1"}\n' + "ab" * 32 + "  x.c4gh\n")
    assert ingest._sidecar(str(out)) == "ab" * 32
    assert ingest._sidecar(str(tmp_path / "none.c4gh")) is None


@pytest.mark.parametrize("smoke", [True, False])
def test_overlap_report(bench: SimpleNamespace, capsys: pytest.CaptureFixture[str], smoke: bool) -> None:
    """benchmarks/overlap.py: the ratio 2 jobs / 1 job and each job's share; a smoke run says it only checks."""
    import overlap

    a = SimpleNamespace(files=4, size_bytes=1000, ranks=2, repeat=1, dbs=["sqlite"], smoke=smoke)
    rows = [
        {"db": "sqlite", "contender": "1 job", "round": 0, "wall": 2.0, "shares": [4], "problems": []},
        {"db": "sqlite", "contender": "2 jobs", "round": 0, "wall": 1.5, "shares": [1, 3], "problems": []},
    ]
    summary = overlap.report(a, rows)
    out = capsys.readouterr().out
    assert summary["by_db"]["sqlite"]["ratio"] == 0.75 and summary["failed"] == 0
    assert "ratio 2/1 0.75" in out and "[[1, 3]]" in out
    assert ("smoke run: checks only" in out) == smoke
