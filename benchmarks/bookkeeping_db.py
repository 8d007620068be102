"""Bookkeeping alone (`bookkeeping.py --db-only`): the tracking-database work legampi does per file.

What "bookkeeping" means here (issue 15's goal: >= 5,000 files/s on SQLite and on PostgreSQL): every
statement legampi sends to the tracking database for one file's life, through legampi's own code, with
no file IO, no crypto and no MPI (the small-file benchmarks measure those). In order, on one connection
as each command holds one:

  register  manifest.load + registration.prepare + Database.register      (`legampi register`)
  monitor   monitor.run_pass until every file is moved (pass_limit + 1 passes; its folder listing and
            move are replaced by an in-memory listing and a no-op, the database calls are the real ones)
  claim     what `process`'s plan does on rank 0: job_start, then in one transaction Database.files
            (names, claims.PLAN_COLUMNS) and Database.claim per 1,000 names
  record    what the recorder's flush does per batch of [func] batch_size results: record_results
            (result rows, checksums, locations, `available` events, dataset dates), then the
            `source-removed` events; job_end
  status    the read model `legampi status` prints (status.ArchiveStatus.read)

files/s = files / (sum of the phases' wall seconds). The run checks the outcome: every file
`available` with its archive path and checksum, five events per file (registered, received,
claimed, available, source-removed), the dataset's totals and four dates.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import os
import pstats
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

DATASET = "EGAD-BOOKKEEPING"
PHASES = ("register", "monitor", "claim", "record", "status")
TARGET_FILES_PER_S = 5000.0


def _config(base: Path, db_url: str) -> Any:
    """A legampi Config with empty workspace folders under BASE and the given database."""
    from legampi.config import load

    for w in ("receiving", "processing", "end_storage", "metadata"):
        (base / w).mkdir(parents=True, exist_ok=True)
    ini = base / "legampi.ini"
    ws = "\n".join(f"{w} = {base / w}" for w in ("receiving", "processing", "end_storage", "metadata"))
    # no [crypto] keys are read by any phase; the archive key line is what config validation requires
    pk = base / "archive.pub"
    pk.write_text(
        "-----BEGIN CRYPT4GH PUBLIC KEY-----\n" + "A" * 43 + "=\n-----END CRYPT4GH PUBLIC KEY-----\n", encoding="ascii"
    )
    ini.write_text(
        f"[database]\nurl = {db_url}\n\n[workspaces]\n{ws}\n\n[crypto]\narchive_public_key = {pk}\n\n"
        "[func_conf]\nextensions = .c4gh,.cip,.gpg\n",
        encoding="utf-8",
    )
    return load(str(ini))


def _names(n: int) -> list[str]:
    return [f"d{i // 1000:03d}/f{i:06d}.dat.c4gh" for i in range(1, n + 1)]


def write_manifest(path: Path, names: list[str]) -> None:
    """A tab manifest (name, md5, size, sha256) with made-up checksums: nothing is decrypted here."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{n}\t{i:032x}\t{1024 + 124}\t{i:064x}\n" for i, n in enumerate(names, 1))


@contextlib.contextmanager
def _in_memory_folders(listing: dict[str, Any]) -> Iterator[None]:
    """monitor.run_pass with LISTING as receiving's content and a move that does nothing (no file IO)."""
    import legampi.monitor as monitor

    saved = monitor.scan, monitor.move_into
    monitor.scan = lambda _folder: iter(sorted(listing.items()))  # type: ignore[assignment]
    monitor.move_into = lambda _src, _dst: None  # type: ignore[assignment]
    try:
        yield
    finally:
        monitor.scan, monitor.move_into = saved


def _results(rows: list[dict[str, Any]], base: Path) -> list[Any]:
    """One `available` FileResult per claimed row, as a worker sends it."""
    from legampi.stream import FileResult

    host = socket.gethostname()
    return [
        FileResult(
            r["file_id"],
            r["file_name"],
            "available",
            archive_path=str(base / "end_storage" / r["file_name"]),
            md5=r["md5"],
            sha256=r["sha256"],
            archive_checksum=f"{i:064x}",
            archive_checksum_type="sha256",
            archive_key="benchmark-key-fingerprint",
            plain_size=1024,
            archive_size=1024 + 124,
            bytes_read=1024 + 124,
            seconds=0.002,
            host=host,
            rank=1 + i % 2,
        )
        for i, r in enumerate(rows)
    ]


def _phase_register(db: Any, cfg: Any, manifest: Path) -> None:
    from legampi import manifest as mf
    from legampi import registration

    ds, entries = mf.load(manifest, DATASET)
    entries = registration.prepare(entries, cfg, str(manifest))
    added, _unchanged = db.register(ds, entries, str(manifest))
    if added != len(entries):
        raise RuntimeError(f"register added {added} of {len(entries)} files")


def _phase_monitor(db: Any, cfg: Any, names: list[str]) -> int:
    from legampi import monitor

    old = time.time() - 10 * cfg.func.age_limit - 10  # finished transfers: old enough to move
    listing = {n: SimpleNamespace(st_size=1024 + 124, st_mtime=old) for n in names}
    ws, moved, passes = cfg.workspaces, 0, 0
    with _in_memory_folders(listing):
        while listing and passes < cfg.func.pass_limit + 2:
            rep = monitor.run_pass(db, ws.receiving, ws.processing, cfg.func.age_limit, cfg.func.pass_limit)
            passes += 1
            moved += len(rep.moved)
            for n in rep.moved:
                del listing[n]
    if moved != len(names):
        raise RuntimeError(f"monitor moved {moved} of {len(names)} files in {passes} passes")
    return passes


def _phase_claim(db: Any, names: list[str], job_id: str) -> list[dict[str, Any]]:
    from legampi.claims import PLAN_COLUMNS
    from legampi.db import chunks

    db.job_start(job_id, "process", socket.gethostname(), 3)
    claimed: list[dict[str, Any]] = []
    with db.transaction():
        for chunk in chunks(names, 1000):
            rows = db.files(names=chunk, columns=PLAN_COLUMNS)
            got = set(db.claim([r["file_id"] for r in rows], job_id))
            claimed += [r for r in rows if r["file_id"] in got]
    if len(claimed) != len(names):
        raise RuntimeError(f"claimed {len(claimed)} of {len(names)} files")
    return claimed


def _phase_record(db: Any, cfg: Any, results: list[Any], job_id: str, one_commit: bool = False) -> None:
    """The recorder's writes: per batch record_results, then (sources removed) the source-removed events
    in a second transaction; with ONE_COMMIT those events go with the next batch's record_results."""
    from legampi.db import Event, chunks

    processing = cfg.workspaces.processing
    removed: list[Any] = []
    for batch in chunks(results, cfg.func.batch_size):
        recorded = db.record_results(batch, job_id, removed) if one_commit else db.record_results(batch, job_id)
        removed = [Event(r.file_id, None, "source-removed", "available", str(processing / r.rel)) for r in recorded]
        if not one_commit:
            db.add_events(removed, job_id)
    if one_commit:
        db.add_events(removed, job_id)
    db.job_end(job_id, 0, f"{len(results)} file(s) archived", [(1, "h", len(results), 0, 1.0)])


def _phase_status(db: Any) -> None:
    from legampi.status import ArchiveStatus

    st = ArchiveStatus.read(db)
    if not st.datasets:
        raise RuntimeError("status shows no dataset")


def check(db: Any, n: int) -> list[str]:
    """Problems with the database's final state (empty: fine)."""
    problems = []
    rows = db.files(columns=("file_id", "status", "archive_path", "archive_checksum", "claimed_by"))
    bad = [r["file_id"] for r in rows if r["status"] != "available" or not r["archive_path"] or r["claimed_by"]]
    if len(rows) != n or bad:
        problems.append(f"{len(rows)} rows of {n}, {len(bad)} not available/recorded, e.g. {bad[:3]}")
    counts = db.query("SELECT event, count(*) AS n FROM file_event WHERE file_id IS NOT NULL GROUP BY event")
    want = {"registered": n, "received": n, "claimed": n, "available": n, "source-removed": n}
    got = {r["event"]: int(r["n"]) for r in counts}
    if got != want:
        problems.append(f"events {got}, want {want}")
    ds = db.datasets(DATASET)
    dates = ("date_requested", "date_download_start", "date_download_end", "date_processing_end")
    if not ds or ds[0]["n_files"] != n or any(ds[0][d] is None for d in dates):
        problems.append(f"dataset row {ds[0] if ds else None}: want {n} files and all four dates")
    return problems


def _server_cpu(db: Any) -> Callable[[], float]:
    """CPU seconds so far of the PostgreSQL backend serving DB, read from /proc (a local server), or a
    clock that stays at 0 (SQLite runs in this process; a remote server's CPU cannot be read)."""
    if db.backend != "postgresql":
        return lambda: 0.0
    pid = db.query("SELECT pg_backend_pid() AS pid")[0]["pid"]
    tick = os.sysconf("SC_CLK_TCK")
    stat = Path(f"/proc/{pid}/stat")

    def read() -> float:
        try:
            fields = stat.read_text(encoding="ascii").rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    return read


def _timed(
    row: dict[str, Any], phase: str, fn: Callable[[], Any], prof: cProfile.Profile | None, server: Callable[[], float]
) -> Any:
    t0, c0, s0 = time.perf_counter(), time.process_time(), server()
    if prof is not None:
        prof.enable()
    try:
        return fn()
    finally:
        if prof is not None:
            prof.disable()
        row[f"{phase}_s"] = round(time.perf_counter() - t0, 4)
        row[f"{phase}_cpu_s"] = round(time.process_time() - c0, 4)  # this process (with SQLite: all of it)
        row[f"{phase}_server_cpu_s"] = round(server() - s0, 4)  # the PostgreSQL backend serving it


def run(kind: str, url: str, base: Path, n: int, profile: bool = False, one_commit: bool = False) -> dict[str, Any]:
    """One run on a fresh database at URL (schema created here); returns the row (with 'problems')."""
    import legampi.ingest
    import legampi.manifest
    import legampi.monitor
    import legampi.registration
    import legampi.status  # noqa: F401
    from legampi.db import Database

    row: dict[str, Any] = {"db": kind, "files": n, "problems": []}
    cfg = _config(base, url)
    names = _names(n)
    manifest = base / "manifest.tsv"
    write_manifest(manifest, names)
    db = Database.connect(cfg.database)
    prof = cProfile.Profile() if profile else None
    job_id = f"bench-{os.getpid()}"
    try:
        db.init_schema(cfg.func.extensions)
        srv = _server_cpu(db)
        _timed(row, "register", lambda: _phase_register(db, cfg, manifest), prof, srv)
        row["monitor_passes"] = _timed(row, "monitor", lambda: _phase_monitor(db, cfg, names), prof, srv)
        claimed = _timed(row, "claim", lambda: _phase_claim(db, names, job_id), prof, srv)
        results = _results(claimed, base)  # what the workers would send: not bookkeeping, not timed
        _timed(row, "record", lambda: _phase_record(db, cfg, results, job_id, one_commit), prof, srv)
        _timed(row, "status", lambda: _phase_status(db), prof, srv)
        row["problems"] += check(db, n)
    except Exception as exc:  # noqa: BLE001 - a broken run is reported as a failed row, not hidden
        row["problems"].append(f"{type(exc).__name__}: {exc}")
    finally:
        db.close()
    total = sum(row.get(f"{p}_s", 0.0) for p in PHASES)
    row["total_s"] = round(total, 4)
    row["cpu_s"] = round(sum(row.get(f"{p}_cpu_s", 0.0) for p in PHASES), 4)
    row["server_cpu_s"] = round(sum(row.get(f"{p}_server_cpu_s", 0.0) for p in PHASES), 4)
    row["fps"] = n / total if total and not row["problems"] else None
    for p in PHASES:
        if row.get(f"{p}_s"):
            row[f"{p}_fps"] = n / row[f"{p}_s"]
    if prof is not None:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
        row["profile_text"] = out.getvalue()
    return row
