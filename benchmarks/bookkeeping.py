#!/usr/bin/env python3
"""Bookkeeping benchmark: how many tiny files per second legampi registers, archives and records.

With 1 KiB files the crypto is free, so what is measured is everything else: process start-up, the
database (claims, batched result rows, events), MPI messages, per-file fsyncs and logging. The issue's
target is >= 300 files/s end to end (register + process) on SQLite and on PostgreSQL.

This module also holds the helpers that ``memory.py`` and ``rank0.py`` share: the per-rank resource
wrapper, the legampi workspace, the PostgreSQL throwaway schema and the archive checks.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import datetime as dt
import hashlib
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Run as a script: this folder is first on sys.path, so the siblings import.
import bookkeeping_db
import datagen
from datagen import KeySet
from ingest import _tool, machine_info, write_legampi_config

HERE = Path(__file__).resolve().parent
PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
TARGET_FILES_PER_S = 300.0

# Runs one MPI rank of legampi in-process, then records the rank's own getrusage (peak RSS = VmHWM,
# CPU seconds) as JSON. In-process rather than a parent process, so the numbers are the rank's alone.
# Team.run (the dispatch loop) is wrapped to read the CPU clock before and after, so start-up (imports,
# MPI, recovery scan) can be told apart from the loop; it changes nothing else. With BENCH_PROFILE_RANKS
# the listed ranks run under cProfile (slower, for the breakdown only).
RANK_WRAPPER = r"""
import json, os, resource, sys, time
t0 = time.monotonic()
out, argv = sys.argv[1], sys.argv[2:]
sys.argv = ["legampi", *argv]
rank = os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or "0"
prof = None
if rank in os.environ.get("BENCH_PROFILE_RANKS", "").split(","):
    import cProfile
    prof = cProfile.Profile()
from legampi.cli import main
import legampi.parallel
loop = {}
_run = legampi.parallel.Team.run
def _status(key):
    with open("/proc/self/status", encoding="ascii") as fh:
        return next((int(ln.split()[1]) for ln in fh if ln.startswith(key + ":")), None)
def _timed_run(self, *a, **k):
    loop["rss_loop_start_kb"], loop["hwm_loop_start_kb"] = _status("VmRSS"), _status("VmHWM")
    c0, w0 = time.process_time(), time.monotonic()
    try:
        return _run(self, *a, **k)
    finally:
        loop["loop_cpu"] = loop.get("loop_cpu", 0.0) + time.process_time() - c0
        loop["loop_wall"] = loop.get("loop_wall", 0.0) + time.monotonic() - w0
        loop["rss_loop_end_kb"] = _status("VmRSS")
legampi.parallel.Team.run = _timed_run
code = 1
try:
    if prof is not None:
        prof.enable()
    code = main(argv)
finally:
    if prof is not None:
        prof.disable()
        prof.dump_stats(f"{out}/rank{rank}.prof")
    ru = resource.getrusage(resource.RUSAGE_SELF)
    hwm = _status("VmHWM")
    with open(f"{out}/rank{rank}.json", "w", encoding="utf-8") as fh:
        json.dump({"rank": int(rank), "pid": os.getpid(), "maxrss_kb": ru.ru_maxrss, "vmhwm_kb": hwm,
                   "utime": ru.ru_utime, "stime": ru.ru_stime, "wall": time.monotonic() - t0,
                   "voluntary_ctx": ru.ru_nvcsw, "involuntary_ctx": ru.ru_nivcsw, "exit": code, **loop}, fh)
sys.exit(code)
"""


# --------------------------------------------------------------------------- shared helpers


@dataclass
class Entry:
    """One generated input: the name in processing, the plaintext facts of the manifest and the
    transferred size (bytes of the encrypted file, the manifest's size column)."""

    name: str
    size: int  # plaintext bytes (checked against the archived copy)
    md5: str
    sha256: str
    transferred_size: int = 0


def encrypt_to(path: Path, chunks: Iterator[bytes], pk: bytes) -> tuple[int, str, str]:
    """Crypt4GH-encrypt plaintext chunks (memory only) to PATH; returns plaintext size, md5, sha256."""
    from legampi.formats.crypt4gh import encrypt_stream

    md5, sha = hashlib.md5(), hashlib.sha256()
    size = [0]

    def hashed() -> Iterator[bytes]:
        for c in chunks:
            md5.update(c)
            sha.update(c)
            size[0] += len(c)
            yield c

    with open(path, "wb") as out:
        for block in encrypt_stream(hashed(), pk, batch_segments=64):
            out.write(block)
    return size[0], md5.hexdigest(), sha.hexdigest()


def make_small_files(folder: Path, n: int, size: int, pk: bytes) -> list[Entry]:
    """N Crypt4GH files of SIZE random plaintext bytes each, named f000001.dat.c4gh ..."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(1, n + 1):
        name = f"f{i:06d}.dat.c4gh"
        got, md5, sha = encrypt_to(folder / name, iter([os.urandom(size)]), pk)
        out.append(Entry(name, got, md5, sha, (folder / name).stat().st_size))
    return out


def write_manifest(path: Path, entries: list[Entry]) -> None:
    """Tab manifest: name, plaintext md5, transferred size (of the encrypted file), plaintext sha256."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{e.name}\t{e.md5}\t{e.transferred_size}\t{e.sha256}\n" for e in entries)


def link_all(src: Path, dst: Path, entries: list[Entry]) -> None:
    """Hard-link the generated inputs into a fresh processing folder (legampi removes what it archives)."""
    dst.mkdir(parents=True, exist_ok=True)
    for e in entries:
        os.link(src / e.name, dst / e.name)


@contextlib.contextmanager
def pg_schema(dsn: str) -> Iterator[str]:
    """A fresh PostgreSQL schema for one run (dropped afterwards); yields the URL that selects it."""
    import psycopg2

    name = "bench_" + uuid.uuid4().hex[:12]
    conn = psycopg2.connect(dsn, connect_timeout=5)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE SCHEMA "{name}"')
    try:
        sep = "&" if "?" in dsn else "?"
        yield f"{dsn}{sep}options=-csearch_path%3D{name}"
    finally:
        conn.cursor().execute(f'DROP SCHEMA "{name}" CASCADE')
        conn.close()


@contextlib.contextmanager
def database(kind: str, base: Path, pg_dsn: str) -> Iterator[str]:
    """URL of a throwaway tracking database: a new SQLite file under BASE, or a fresh PostgreSQL schema."""
    if kind == "sqlite":
        base.mkdir(parents=True, exist_ok=True)
        yield f"sqlite:///{base / 'legampi.db'}"
    elif kind == "postgresql":
        with pg_schema(pg_dsn) as url:
            yield url
    else:
        raise ValueError(f"unknown database {kind!r} (sqlite or postgresql)")


def keys_in(folder: Path) -> KeySet:
    """Throwaway inbox and archive key pairs (no passphrase: benchmark keys)."""
    return datagen.make_keys(folder)


def tool(name: str) -> str:
    exe = _tool(name)
    if not exe:
        raise RuntimeError(f"command not found: {name} (is the virtualenv's bin folder there?)")
    return exe


@dataclass
class Step:
    """One timed command."""

    label: str
    wall: float
    code: int
    log: str


def run_step(label: str, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Step:
    """Run CMD, time it, keep its output in LOG; the caller decides what a non-zero exit means."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - t0
    log.write_text(proc.stdout + proc.stderr, encoding="utf-8")
    return Step(label, wall, proc.returncode, proc.stdout + proc.stderr)


def tail(text: str, n: int = 3) -> str:
    return " | ".join((text.strip() or "no output").splitlines()[-n:])[-500:]


@dataclass
class ProcessRun:
    """`mpiexec -n RANKS legampi process` with every rank's own resource usage."""

    ranks: int
    wall: float = 0.0
    code: int = 0
    loop_seconds: float | None = None  # rank 0's dispatch loop (after plan and claim, to the last result)
    usage: dict[int, dict] = field(default_factory=dict)
    log: str = ""
    profiles: dict[int, str] = field(default_factory=dict)


def run_process(
    conf: Path, ranks: int, usage_dir: Path, log: Path, profile_ranks: str = "", extra: list[str] | None = None
) -> ProcessRun:
    """Run the process step under mpiexec, each rank inside RANK_WRAPPER; collect usage per rank."""
    usage_dir.mkdir(parents=True, exist_ok=True)
    for old in usage_dir.glob("rank*"):
        old.unlink()
    env = dict(os.environ, BENCH_PROFILE_RANKS=profile_ranks)
    cmd = [
        tool("mpiexec"),
        "-n",
        str(ranks),
        sys.executable,
        "-c",
        RANK_WRAPPER,
        str(usage_dir),
        "-c",
        str(conf),
        "--log-level",
        "info",
        "process",
        *(extra or []),
    ]
    step = run_step("process", cmd, log, env)
    run = ProcessRun(ranks, step.wall, step.code, log=step.log)
    m = re.search(r"job \S+: \d+ file\(s\), .* in ([0-9.]+)s = ", step.log)
    run.loop_seconds = float(m.group(1)) if m else None
    for p in sorted(usage_dir.glob("rank*.json")):
        u = json.loads(p.read_text(encoding="utf-8"))
        run.usage[int(u["rank"])] = u
    if run.usage.get(0, {}).get("loop_wall") is not None:  # finer than the log's one decimal
        run.loop_seconds = run.usage[0]["loop_wall"]
    for p in sorted(usage_dir.glob("rank*.prof")):
        run.profiles[int(p.stem.removeprefix("rank"))] = str(p)
    return run


def prepare(base: Path, keys: KeySet, db_url: str, mode: str = "full") -> tuple[Path, dict[str, Path]]:
    """A fresh legampi config and workspaces under BASE, with the schema initialised."""
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    conf = base / "legampi.ini"
    # ingest's writer interpolates '%' (a PostgreSQL URL with options=-csearch_path%3D... breaks it) and
    # legampi reads without interpolation: write a placeholder, then set the URL raw.
    spaces = write_legampi_config(conf, base, keys, mode, "sqlite:///placeholder")
    raw = configparser.ConfigParser(interpolation=None)
    raw.read(conf, encoding="utf-8")
    raw["database"]["url"] = db_url
    with open(conf, "w", encoding="utf-8") as f:
        raw.write(f)
    step = run_step("init-db", [tool("legampi"), "-c", str(conf), "init-db"], base / "init-db.log")
    if step.code != 0:
        raise RuntimeError(f"init-db exit {step.code}: {tail(step.log)}")
    return conf, spaces


def check_archive(conf: Path, spaces: dict[str, Path], entries: list[Entry], keys: KeySet, spot: int = 3) -> list[str]:
    """Problems (empty: fine): every file archived with a sidecar, recorded `available`, spot-decrypted."""
    from legampi.archive import archive_name
    from legampi.config import load
    from legampi.db import Database

    problems: list[str] = []
    end_storage = spaces["end_storage"]
    cfg = load(str(conf))
    exts = cfg.func.extensions
    missing = []
    for e in entries:
        final = end_storage / archive_name(e.name, exts)
        if not final.is_file() or not Path(str(final) + ".sha256").is_file():
            missing.append(e.name)
    if missing:
        problems.append(f"{len(missing)} file(s) not archived with a sidecar, e.g. {missing[:3]}")
    db = Database.connect(cfg.database)
    try:
        rows = db.file_rows()
    finally:
        db.close()
    status = {r.file_name: r.status for r in rows}
    bad = [f"{e.name}={status.get(e.name)}" for e in entries if status.get(e.name) != "available"]
    if bad:
        problems.append(f"{len(bad)} file(s) not recorded as available, e.g. {bad[:3]}")
    if not problems and entries:
        sk = keys.archive_secret()
        ordered = sorted(entries, key=lambda e: e.name)
        picks = {
            ordered[0].name: ordered[0],
            ordered[-1].name: ordered[-1],
            ordered[len(ordered) // 2].name: ordered[len(ordered) // 2],
        }
        for e in list(picks.values())[:spot]:
            final = end_storage / archive_name(e.name, exts)
            md5, sha, size = datagen.decrypt_digest(str(final), sk)
            if (md5, sha, size) != (e.md5, e.sha256, e.size):
                problems.append(f"{e.name}: archive decrypts to md5 {md5} size {size}, manifest {e.md5} {e.size}")
    leftovers = [p.name for p in spaces["processing"].iterdir()]
    if leftovers:
        problems.append(f"{len(leftovers)} source(s) still in processing, e.g. {leftovers[:3]}")
    return problems


def top_functions(prof: str, n: int = 15, sort: str = "tottime") -> list[dict]:
    """The N functions a cProfile dump spent most time in."""
    st = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_cc, calls, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{Path(file).name}:{line}({func})" if line else func,
                "calls": calls,
                "tottime": round(tt, 3),
                "cumtime": round(ct, 3),
            }
        )
    rows.sort(key=lambda r: -r[sort])
    return rows[:n]


def write_json(path: Path | None, name: str, result: dict) -> Path:
    path = path or HERE / "results" / f"{name}-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, default=str)
    print(f"\nJSON: {path}")
    return path


def workdir_for(arg: Path | None, prefix: str) -> Path:
    """A new temporary folder, or --workdir emptied of what an earlier run of these scripts left there."""
    if arg is None:
        return Path(tempfile.mkdtemp(prefix=prefix))
    w = arg.resolve()
    w.mkdir(parents=True, exist_ok=True)
    ours = ("inbox", "keys", "manifest.tsv", "run-", "files-", "size-")
    strangers = [p.name for p in w.iterdir() if not p.name.startswith(ours)]
    if strangers:
        raise SystemExit(f"error: --workdir {w} holds files these benchmarks did not make: {strangers[:5]}")
    for p in w.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    return w


SMOKE_NOTE = "smoke run: checks only; speed and memory targets are for full runs (docs/benchmarks.md)"


def target(a: argparse.Namespace, text: str) -> str:
    """' (target TEXT)' for a result line, or nothing in a smoke run: a smoke run checks that the benchmark
    runs and its output is right, on whatever machine CI has; targets are judged on full runs only."""
    return "" if getattr(a, "smoke", False) else f" (target {text})"


def report_end(rows: list[dict], label: str, summary: dict, smoke: bool = False) -> dict:
    """Print every check that failed (row[label]: problem) and every target missed; return SUMMARY.
    A smoke run judges no target: they are dropped from SUMMARY (and its JSON), and it says so."""
    for r in rows:
        for p in r["problems"]:
            print(f"FAILED {r[label]}: {p}", file=sys.stderr)
    if smoke:
        summary["targets"] = {}
        print(SMOKE_NOTE)
        return summary
    missed = [k for k, v in summary["targets"].items() if not v]
    if missed:
        print(f"targets missed: {', '.join(missed)}")
    return summary


def print_table(rows: list[list[str]], header: list[str]) -> None:
    cells = [header, *rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(header))]
    for k, r in enumerate(cells):
        print(
            "  ".join(
                str(c).rjust(w) if k and i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            ).rstrip()
        )
        if k == 0:
            print("  ".join("-" * w for w in widths))


# --------------------------------------------------------------------------- this benchmark

EPILOG = """\
phases (each on a fresh database and fresh workspaces, same generated files):
  register   legampi -c CONF register manifest.tsv --dataset ID       (one process)
  process    mpiexec -n W+1 legampi -c CONF process                    (W workers + rank 0)
  overall    files / (register wall + process wall)
Every rank runs inside a small wrapper that records its own peak RSS and CPU seconds; "rank 0 CPU"
is rank 0's user+system seconds over the process wall; "r0 loop ms/f" its CPU milliseconds per file
inside the dispatch loop. "loop" is rank 0's dispatch loop (after plan and claim, to the last result);
process wall minus loop is start-up (interpreters, MPI, recovery scan, claims) and the final flush.

checks: process exit 0, every file archived with its .sha256 sidecar, every row `available`, no
source left in processing, three archived files decrypted and compared with the manifest. A failed
check exits 1. A missed target is reported; it exits 1 only with --fail-on-target.

--profile runs rank 0 and rank 1 under cProfile (inflates per-call costs) and prints where
their time went, e.g. fsync, SQL statements, logging, MPI probes.

examples:
  python benchmarks/bookkeeping.py --smoke
  python benchmarks/bookkeeping.py --files 2000 --db sqlite --profile
  python benchmarks/bookkeeping.py                      # 20000 files, SQLite and PostgreSQL
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bookkeeping.py",
        description=__doc__.split("\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--files", type=int, default=20000, help="number of files (default 20000)")
    p.add_argument("--size", default="1KiB", help="plaintext size of each file (default 1KiB)")
    p.add_argument("--workers", "-W", type=int, default=2, help="worker ranks; mpiexec -n W+1 (default 2)")
    p.add_argument("--db", default="sqlite,postgresql", help="comma list of sqlite,postgresql (default both)")
    p.add_argument("--pg-dsn", default=PG_DSN, help=f"PostgreSQL database for the throwaway schema (default {PG_DSN})")
    p.add_argument("--mode", choices=["full", "header"], default="full", help="[crypto] reencrypt")
    p.add_argument("--profile", action="store_true", help="cProfile ranks 0 and 1; print top functions")
    p.add_argument(
        "--one-commit",
        action="store_true",
        help="with --db-only: each batch's source-removed events written with the next batch's results "
        "(record_results(..., events=...)), one commit per batch instead of two",
    )
    p.add_argument("--smoke", action="store_true", help="300 files on both databases, seconds")
    p.add_argument(
        "--db-only",
        action="store_true",
        help="bookkeeping alone: the tracking-database work per file through legampi's code, no file IO, "
        f"crypto or MPI (bookkeeping_db.py; target >= {bookkeeping_db.TARGET_FILES_PER_S:.0f} files/s)",
    )
    p.add_argument("--fail-on-target", action="store_true", help=f"exit 1 below {TARGET_FILES_PER_S:.0f} files/s")
    p.add_argument("--workdir", type=Path, help="work folder (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--json", type=Path, help="results path (default benchmarks/results/bookkeeping-<time>.json)")
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. 'machine shared')")
    a = p.parse_args(argv)
    if a.smoke:
        a.files = 300
    a.dbs = [x.strip() for x in a.db.split(",") if x.strip()]
    bad = [x for x in a.dbs if x not in ("sqlite", "postgresql")]
    if bad or not a.dbs:
        p.error(f"--db: unknown {bad or 'empty list'}; choose from sqlite,postgresql")
    if a.files < 1 or a.workers < 1:
        p.error("--files and --workers must be at least 1")
    try:
        a.size_bytes = datagen.parse_size(a.size)
    except ValueError as exc:
        p.error(str(exc))
    return a


def bench_one(a: argparse.Namespace, work: Path, kind: str, keys: KeySet, entries: list[Entry]) -> dict:
    """Register and process the files on one database; returns the row (with 'problems')."""
    base = work / f"run-{kind}"
    row: dict = {"db": kind, "files": len(entries), "problems": []}
    with database(kind, base, a.pg_dsn) as url:
        conf, spaces = prepare(base, keys, url, a.mode)
        link_all(work / "inbox", spaces["processing"], entries)
        reg = run_step(
            "register",
            [tool("legampi"), "-c", str(conf), "register", str(work / "manifest.tsv"), "--dataset", "EGAD-BOOKKEEPING"],
            base / "register.log",
        )
        row["register_s"] = round(reg.wall, 3)
        if reg.code != 0:
            row["problems"].append(f"register exit {reg.code}: {tail(reg.log)}")
            return row
        pr = run_process(conf, a.workers + 1, base / "usage", base / "process.log", "0,1" if a.profile else "")
        row.update(process_s=round(pr.wall, 3), loop_s=pr.loop_seconds, usage=pr.usage)
        if pr.code != 0:
            row["problems"].append(f"process exit {pr.code}: {tail(pr.log)}")
            return row
        row["problems"] += check_archive(conf, spaces, entries, keys)
        n = len(entries)
        row["register_fps"] = n / reg.wall
        row["process_fps"] = n / pr.wall
        row["loop_fps"] = n / pr.loop_seconds if pr.loop_seconds else None
        row["overall_fps"] = n / (reg.wall + pr.wall)
        r0 = pr.usage.get(0, {})
        row["rank0_cpu_s"] = round(r0.get("utime", 0) + r0.get("stime", 0), 3)
        row["rank0_cpu_frac"] = row["rank0_cpu_s"] / pr.wall
        row["rank0_loop_cpu_ms_per_file"] = 1000 * r0["loop_cpu"] / n if "loop_cpu" in r0 else None
        row["worker_cpu_s"] = round(sum(u["utime"] + u["stime"] for r, u in pr.usage.items() if r), 3)
        row["log_lines"] = pr.log.count("\n")
        if a.profile:
            row["profile"] = {
                r: {"tottime": top_functions(p, 15, "tottime"), "cumtime": top_functions(p, 25, "cumtime")}
                for r, p in pr.profiles.items()
            }
    return row


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.db_only:
        return main_db_only(a)
    work = workdir_for(a.workdir, "legampi-bookkeeping-")
    result: dict = {
        "benchmark": "bookkeeping",
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "note": a.note,
        "machine": machine_info(),
        "config": {
            "files": a.files,
            "size": a.size_bytes,
            "workers": a.workers,
            "dbs": a.dbs,
            "mode": a.mode,
            "profile": a.profile,
        },
    }
    print(f"work folder: {work}{' (kept)' if a.keep else ''}")
    try:
        keys = keys_in(work / "keys")
        t0 = time.perf_counter()
        entries = make_small_files(work / "inbox", a.files, a.size_bytes, keys.inbox_public())
        write_manifest(work / "manifest.tsv", entries)
        print(
            f"data: {len(entries)} Crypt4GH files of {datagen.human(a.size_bytes)} plaintext, generated in "
            f"{time.perf_counter() - t0:.1f} s; W={a.workers} (mpiexec -n {a.workers + 1})"
        )
        rows = []
        for kind in a.dbs:
            try:
                rows.append(bench_one(a, work, kind, keys, entries))
            except Exception as exc:  # noqa: BLE001 - a broken run is reported as a failed row, not hidden
                rows.append({"db": kind, "files": a.files, "problems": [f"{type(exc).__name__}: {exc}"]})
    finally:
        if not a.keep:
            shutil.rmtree(work)
    result["results"] = rows
    result["machine"]["loadavg_end"] = os.getloadavg()
    code = report(a, rows)
    write_json(a.json, "bookkeeping", result)
    return code


def main_db_only(a: argparse.Namespace) -> int:
    """--db-only: each database in turn, fresh, in this process (bookkeeping_db.py says what is timed)."""
    work = workdir_for(a.workdir, "legampi-bookkeeping-")
    result: dict = {
        "benchmark": "bookkeeping-db-only",
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "note": a.note,
        "machine": machine_info(),
        "config": {"files": a.files, "dbs": a.dbs, "profile": a.profile, "one_commit": a.one_commit},
    }
    print(f"work folder: {work}{' (kept)' if a.keep else ''}")
    rows = []
    try:
        for kind in a.dbs:
            base = work / f"run-{kind}"
            try:
                with database(kind, base, a.pg_dsn) as url:
                    rows.append(bookkeeping_db.run(kind, url, base, a.files, a.profile, a.one_commit))
            except Exception as exc:  # noqa: BLE001 - a broken run is reported as a failed row, not hidden
                rows.append({"db": kind, "files": a.files, "problems": [f"{type(exc).__name__}: {exc}"]})
    finally:
        if not a.keep:
            shutil.rmtree(work)
    result["results"] = rows
    result["machine"]["loadavg_end"] = os.getloadavg()
    code = report_db_only(a, rows)
    write_json(a.json, "bookkeeping-db-only", result)
    return code


def report_db_only(a: argparse.Namespace, rows: list[dict]) -> int:
    """The --db-only table: seconds per phase and files/s overall; 1 on a failed check (or a missed
    target with --fail-on-target, never in a smoke run)."""
    goal = bookkeeping_db.TARGET_FILES_PER_S
    print(
        f"\n== bookkeeping alone (database only): {a.files} files; seconds per phase"
        + target(a, f">= {goal:.0f} files/s")
    )
    phases = bookkeeping_db.PHASES
    table = [
        [r["db"], str(r["files"]), *(_f(r.get(f"{p}_s"), "{:.3f}") for p in phases), _f(r.get("total_s"), "{:.3f}"),
         _f(r.get("cpu_s"), "{:.3f}"), _f(r.get("server_cpu_s"), "{:.3f}"), _f(r.get("fps")),
         "ok" if not r["problems"] else "FAILED"]
        for r in rows
    ]  # fmt: skip
    print_table(table, ["db", "files", *phases, "total s", "CPU s", "server CPU s", "files/s", "check"])
    for r in rows:
        for p in r["problems"]:
            print(f"FAILED {r['db']}: {p}", file=sys.stderr)
        if r.get("profile_text"):
            print(f"\n-- profile {r['db']} (cProfile over the timed phases, top by own time)\n{r['profile_text']}")
    missed = [r["db"] for r in rows if not r["problems"] and (r.get("fps") or 0) < goal]
    if a.smoke:
        missed = []
        print(SMOKE_NOTE)
    elif missed:
        print(f"below target ({goal:.0f} files/s, database only) on: {', '.join(missed)}")
    if any(r["problems"] for r in rows):
        return 1
    return 1 if missed and a.fail_on_target else 0


def _f(x: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def report(a: argparse.Namespace, rows: list[dict]) -> int:
    print(
        f"\n== bookkeeping: {a.files} files of {datagen.human(a.size_bytes)}, W={a.workers}; files/s"
        + target(a, f">= {TARGET_FILES_PER_S:.0f} overall")
    )
    table = []
    for r in rows:
        table.append(
            [
                r["db"],
                str(r["files"]),
                _f(r.get("register_s"), "{:.2f}"),
                _f(r.get("register_fps")),
                _f(r.get("process_s"), "{:.2f}"),
                _f(r.get("process_fps")),
                _f(r.get("loop_s"), "{:.1f}"),
                _f(r.get("loop_fps")),
                _f(r.get("overall_fps")),
                _f(r.get("rank0_cpu_frac"), "{:.0%}"),
                _f(r.get("rank0_loop_cpu_ms_per_file"), "{:.2f}"),
                _f(r.get("worker_cpu_s"), "{:.1f}"),
                "ok" if not r["problems"] else "FAILED",
            ]
        )
    print_table(
        table,
        [
            "db",
            "files",
            "register s",
            "files/s",
            "process s",
            "files/s",
            "loop s",
            "files/s",
            "overall f/s",
            "rank0 CPU",
            "r0 loop ms/f",
            "workers CPU s",
            "check",
        ],
    )
    failed = [r for r in rows if r["problems"]]
    for r in failed:
        for p in r["problems"]:
            print(f"FAILED {r['db']}: {p}", file=sys.stderr)
    missed = [r["db"] for r in rows if not r["problems"] and r["overall_fps"] < TARGET_FILES_PER_S]
    if a.smoke:
        missed = []
        print(SMOKE_NOTE)
    elif missed:
        print(f"below target ({TARGET_FILES_PER_S:.0f} files/s end to end) on: {', '.join(missed)}")
    for r in rows:
        for rank, prof in sorted(r.get("profile", {}).items()):
            print(f"\n-- profile {r['db']} rank {rank} (cProfile, top by own time)")
            print_table(
                [
                    [x["function"][:70], str(x["calls"]), f"{x['tottime']:.2f}", f"{x['cumtime']:.2f}"]
                    for x in prof["tottime"]
                ],
                ["function", "calls", "own s", "cum s"],
            )
    if failed:
        return 1
    return 1 if missed and a.fail_on_target else 0


if __name__ == "__main__":
    sys.exit(main())
