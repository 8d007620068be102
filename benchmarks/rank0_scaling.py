#!/usr/bin/env python3
"""Rank 0 scaling benchmark: what one coordinator costs per result when many ranks feed it.

Oversubscribed runs (`mpiexec -n 16/32/64` on a 2-core machine) over thousands of 1 KiB Crypt4GH files,
so that rank 0's own costs dominate what is measured: its CPU per result absorbed, hand-outs/s and
results/s in the dispatch loop, the tracking database's rows/s (SQLite and PostgreSQL) and rank 0's
memory per file and per rank. These are the calibration figures of `benchmarks/scaling_model.py` and
`docs/scaling.md`. On a shared 2-core machine wall times are noisy: the figures that carry over are
rank 0's CPU seconds (getrusage / process_time of rank 0 alone), reported as the median of --repeat runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

# Run as a script: this folder is first on sys.path, so the siblings import.
import bookkeeping
import datagen
from bookkeeping import (
    PG_DSN,
    Entry,
    check_archive,
    database,
    keys_in,
    link_all,
    make_small_files,
    prepare,
    print_table,
    run_process,
    run_step,
    tail,
    tool,
    workdir_for,
    write_json,
    write_manifest,
)
from ingest import machine_info

# Added to bookkeeping's per-rank wrapper (inserted before it patches Team.run): on rank 0 only, count
# messages by tag and read CPU (time.thread_time: the calling thread's own) and wall clocks around the
# recorder's calls, per thread: on the loop thread Recorder.add/tick (with the inline recorder they hold
# the batch write), on the recorder thread its whole life (_serve); Recorder._write (one batch: database
# transaction, source removal, folder fsync) and Database.record_results (the transaction alone) on
# whichever thread runs them (keys prefixed "rec_" off the loop thread). After the wrapper's own timing,
# Team.run is wrapped once more for the loop thread's CPU alone. The counters land in rank0.json.
HOOKS = r"""
import threading
import legampi.recorder, legampi.db
from collections import Counter
_sent, _got = Counter(), Counter()
def _clocked(cls, name, key):
    orig = getattr(cls, name)
    def wrapped(*a, **k):
        c0, w0 = time.thread_time(), time.monotonic()
        try:
            return orig(*a, **k)
        finally:
            kk = key if threading.current_thread() is threading.main_thread() else "rec_" + key
            loop[kk + "_cpu"] = loop.get(kk + "_cpu", 0.0) + time.thread_time() - c0
            loop[kk + "_wall"] = loop.get(kk + "_wall", 0.0) + time.monotonic() - w0
            loop[kk + "_calls"] = loop.get(kk + "_calls", 0) + 1
    setattr(cls, name, wrapped)
if rank == "0":
    _send0, _recv0 = legampi.parallel.Team.send, legampi.parallel.Team.recv
    def _send(self, obj, dest, tag):
        _sent[tag] += 1
        if tag == 1:
            loop["tasks_sent"] = loop.get("tasks_sent", 0) + len(obj)
        loop["sent"] = dict(_sent)
        return _send0(self, obj, dest, tag)
    def _recv(self, *a, **k):
        out = _recv0(self, *a, **k)
        _got[out[2]] += 1
        loop["received"] = dict(_got)
        return out
    legampi.parallel.Team.send, legampi.parallel.Team.recv = _send, _recv
    for _name in ("add", "tick", "_write", "_serve"):
        _clocked(legampi.recorder.Recorder, _name, _name.strip("_"))
    _clocked(legampi.db.Database, "record_results", "db")
    import legampi.transport
    _clocked(legampi.transport.Doorbell, "wait", "idle")  # the loop asleep, waiting for a message
"""
AFTER = r"""
_run1 = legampi.parallel.Team.run
def _thread_run(self, *a, **k):
    c0 = time.thread_time()
    try:
        return _run1(self, *a, **k)
    finally:
        loop["loop_thread_cpu"] = loop.get("loop_thread_cpu", 0.0) + time.thread_time() - c0
legampi.parallel.Team.run = _thread_run
"""
ANCHOR = "legampi.parallel.Team.run = _timed_run"
WRAPPER = bookkeeping.RANK_WRAPPER.replace(ANCHOR, HOOKS + ANCHOR + "\n" + AFTER)
assert WRAPPER != bookkeeping.RANK_WRAPPER, "bookkeeping.RANK_WRAPPER changed: update the hook anchor"
bookkeeping.RANK_WRAPPER = WRAPPER  # bookkeeping.run_process reads its module global at call time
# rank 0's modes (the A/B switches, read by every rank from the environment mpiexec passes on):
# legampi.recorder.MODE_ENV and legampi.dispatch.HANDOUT_ENV
MODES = {
    "inline": {"LEGAMPI_RECORDER": "inline", "LEGAMPI_HANDOUT": "single"},  # rank 0 before issue 18
    "thread": {"LEGAMPI_HANDOUT": "single"},  # the recorder thread, one file per hand-out message
    "batched": {},  # legampi's default: the recorder thread and hand-outs batched per message
}

TASKS, RESULT = 1, 2  # legampi.parallel's tags (not imported: mpi4py stays out of the harness)

EPILOG = """\
what is measured (every rank in bookkeeping's wrapper; rank 0 also counts its messages and clocks its
recorder per thread; data generation, init-db and register are not timed). Per result, in ms:
  mode             inline: rank 0 before issue 18 (batch writes and unlinks on the loop thread, one file
                   per hand-out message); thread: the recorder thread; batched: the recorder thread and
                   hand-outs batched per message (legampi's default)
  r0 loop          what rank 0's dispatch-loop thread spends per result: its own CPU + the time it waits
                   inside the recorder (inline: the commit and the unlinks; thread: only the queue).
                   1 / this is the loop's ceiling in results/s
  loop busy        the loop's wall minus its sleep in the doorbell's select (waiting for a message): an
                   upper bound of the same, which also counts the loop's waits for rank 0's GIL anywhere
                   and its own descheduling on these oversubscribed cores
  loop CPU         the loop thread's CPU alone (time.thread_time around Team.run)
  in recorder      the loop thread's wall inside Recorder.add/tick (inline: includes the batch writes)
  of which msg     loop CPU outside Recorder.add/tick: probing, receiving, handing out, doorbells, progress
                   (per message: what batching several files per message divides)
  of which file    loop CPU inside Recorder.add/tick minus batch writes: summary, log line (inline), queue
  rec thread CPU   the recorder thread's CPU (log lines, SQL, unlinks, fsync) - shares rank 0's GIL
  all threads      rank 0's process CPU during the loop (every thread; the old "r0 CPU/result")
  TASKS msgs       messages that carried hand-outs; results/s = results received / loop wall (bounded by
                   the 2 oversubscribed cores, not by rank 0)
  db rows/s        rows / wall seconds inside record_results, whichever thread runs it
  r0 peak MiB      rank 0's VmHWM; per rank = slope over -n at fixed files, per file = slope over files
  batch write alone  the same files registered, claimed and recorded with Database.record_results in
                   batches of [func_conf] batch_size in this process, no MPI: the database's own rows/s
--modes inline,thread,batched runs the modes interleaved (A, B, C, A, B, C, ...) in this one process of
measurement; the summary prints the factors of "r0 loop" and "loop busy" between them, per -n. With
--repeat N every cell is the median of N runs. Load average is read before and after each run.

examples:
  python benchmarks/rank0_scaling.py --smoke                 # -n 8, 200 files, SQLite, one run: < 1 min
  python benchmarks/rank0_scaling.py                         # -n 16,32,64 x 3000 files, both databases, 3 runs
  python benchmarks/rank0_scaling.py --ranks 16,64 --files 2000 --db sqlite --repeat 1
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="rank0_scaling.py",
        description=__doc__.split("\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ranks", default="16,32,64", help="comma list of mpiexec -n (default 16,32,64)")
    p.add_argument("--files", type=int, default=3000, help="files per run (default 3000)")
    p.add_argument("--size", default="1KiB", help="plaintext size of each file (default 1KiB)")
    p.add_argument("--db", default="sqlite,postgresql", help="comma list of sqlite,postgresql (default both)")
    p.add_argument("--pg-dsn", default=PG_DSN)
    p.add_argument("--repeat", type=int, default=3, help="runs per cell, medians shown (default 3)")
    p.add_argument(
        "--memory-files", type=int, default=None, help="also run the smallest -n with this many files (per-file slope)"
    )
    p.add_argument(
        "--modes",
        default="inline,thread,batched",
        help="comma list of rank 0's modes, run interleaved: inline (before issue 18), thread (recorder "
        "thread), batched (recorder thread + batched hand-outs, the default); default all three",
    )
    p.add_argument("--smoke", action="store_true", help="-n 8, 200 files, SQLite, one run")
    p.add_argument("--workdir", type=Path, help="work folder (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json", type=Path, help="results path (default benchmarks/results/rank0_scaling-<time>.json)")
    p.add_argument("--note", default="")
    a = p.parse_args(argv)
    if a.smoke:
        a.ranks, a.files, a.db, a.repeat, a.memory_files, a.modes = "8", 200, "sqlite", 1, None, "batched"
    a.rank_list = [int(x) for x in a.ranks.split(",") if x.strip()]
    a.dbs = [x.strip() for x in a.db.split(",") if x.strip()]
    a.modes = [x.strip() for x in a.modes.split(",") if x.strip()]
    if not a.modes or set(a.modes) - set(MODES):
        p.error(f"--modes takes {', '.join(MODES)}")
    if any(n < 2 for n in a.rank_list) or a.files < 1 or a.repeat < 1:
        p.error("--ranks must be >= 2, --files and --repeat >= 1")
    if a.memory_files is None and not a.smoke:
        a.memory_files = a.files // 3
    a.size_bytes = datagen.parse_size(a.size)
    return a


def one_run(
    a: argparse.Namespace, work: Path, kind: str, ranks: int, keys, entries: list[Entry], mode: str = "batched"
) -> dict:
    """One verified `mpiexec -n RANKS legampi process` over ENTRIES with rank 0 in MODE (MODES); rank 0's
    figures."""
    base = work / f"run-{kind}-n{ranks}-f{len(entries)}-{mode}"
    row: dict = {"db": kind, "ranks": ranks, "files": len(entries), "mode": mode, "problems": []}
    with database(kind, base, a.pg_dsn) as url:
        conf, spaces = prepare(base, keys, url)
        link_all(work / "inbox", spaces["processing"], entries)
        write_manifest(base / "manifest.tsv", entries)
        reg = run_step(
            "register",
            [tool("legampi"), "-c", str(conf), "register", str(base / "manifest.tsv"), "--dataset", "EGAD-SCALE"],
            base / "register.log",
        )
        if reg.code != 0:
            row["problems"].append(f"register exit {reg.code}: {tail(reg.log)}")
            return row
        row["load_before"] = os.getloadavg()[0]
        saved = {k: os.environ.pop(k, None) for m in MODES.values() for k in m}
        os.environ.update(MODES[mode])  # inherited by mpiexec and every rank
        try:
            pr = run_process(conf, ranks, base / "usage", base / "process.log")
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None)
                if v is not None:
                    os.environ[k] = v
        row["load_after"] = os.getloadavg()[0]
        row["wall"] = pr.wall
        if pr.code != 0:
            row["problems"].append(f"process exit {pr.code}: {tail(pr.log)}")
            return row
        r0 = pr.usage.get(0, {})
        if "loop_cpu" not in r0:
            row["problems"].append("rank 0 wrote no usage record")
            return row
        n = len(entries)
        sent, got = r0.get("sent", {}), r0.get("received", {})
        lt = r0.get("loop_thread_cpu", r0["loop_cpu"])  # the loop thread's own CPU
        held_cpu = r0.get("add_cpu", 0.0) + r0.get("tick_cpu", 0.0)  # the loop thread inside the recorder
        held_wall = r0.get("add_wall", 0.0) + r0.get("tick_wall", 0.0)
        db_wall = r0.get("db_wall", 0.0) + r0.get("rec_db_wall", 0.0)
        row.update(
            loop_wall=r0["loop_wall"],
            loop_cpu=r0["loop_cpu"],
            cpu_per_result_ms=1000 * r0["loop_cpu"] / n,
            loop_cpu_per_result_ms=1000 * lt / n,
            loop_ms_per_result=1000 * (lt + max(held_wall - held_cpu, 0.0)) / n,
            busy_ms_per_result=1000 * (r0["loop_wall"] - r0.get("idle_wall", 0.0)) / n,
            held_ms_per_result=1000 * held_wall / n,
            rec_cpu_per_result_ms=1000 * r0.get("rec_serve_cpu", 0.0) / n,
            db_cpu_per_result_ms=1000 * (r0.get("db_cpu", 0.0) + r0.get("rec_db_cpu", 0.0)) / n,
            msg_cpu_per_result_ms=1000 * max(lt - held_cpu, 0.0) / n,
            file_cpu_per_result_ms=1000 * max(held_cpu - r0.get("write_cpu", 0.0), 0.0) / n,
            handouts_per_s=r0.get("tasks_sent", 0) / r0["loop_wall"],
            task_msgs=sent.get(str(TASKS), 0),
            results_per_s=got.get(str(RESULT), 0) / r0["loop_wall"],
            db_rows_per_s=n / db_wall if db_wall else None,
            db_batches=r0.get("db_calls", 0) + r0.get("rec_db_calls", 0),
            r0_hwm_mib=r0["vmhwm_kb"] / 1024,
            r0_cpu_all=r0["utime"] + r0["stime"],
            worker_hwm_mib=statistics.median(u["vmhwm_kb"] for r, u in pr.usage.items() if r) / 1024,
        )
        row["problems"] += check_archive(conf, spaces, entries, keys, spot=1)
    shutil.rmtree(base, ignore_errors=True)
    return row


def batch_write_alone(a: argparse.Namespace, work: Path, kind: str, keys, entries: list[Entry]) -> dict:
    """The database's rows/s without MPI: register ENTRIES, claim them, record them in batches of
    [func_conf] batch_size (200) with Database.record_results in this process; wall and CPU per row."""
    from legampi.config import load
    from legampi.db import Database
    from legampi.stream import FileResult

    base = work / f"run-{kind}-dbonly"
    row: dict = {"db": kind, "files": len(entries), "problems": []}
    with database(kind, base, a.pg_dsn) as url:
        conf, _spaces = prepare(base, keys, url)
        write_manifest(base / "manifest.tsv", entries)
        reg = run_step(
            "register",
            [tool("legampi"), "-c", str(conf), "register", str(base / "manifest.tsv"), "--dataset", "EGAD-DBONLY"],
            base / "register.log",
        )
        if reg.code != 0:
            row["problems"].append(f"register exit {reg.code}: {tail(reg.log)}")
            return row
        cfg = load(str(conf))
        db = Database.connect(cfg.database)
        try:
            files = db.file_rows()
            job = "bench-dbonly"
            db.job_start(job, "process", "bench", 2)
            db.claim([f.file_id for f in files], job)
            results = [
                FileResult(
                    f.file_id,
                    f.file_name,
                    "available",
                    f"/archive/{f.file_name}",
                    f.md5,
                    f.sha256,
                    "0" * 64,
                    "sha256",
                    "key",
                    f.size,
                    f.size,
                )
                for f in files
            ]
            step = cfg.func.batch_size
            row["load_before"] = os.getloadavg()[0]
            c0, w0 = time.process_time(), time.monotonic()
            for i in range(0, len(results), step):
                db.record_results(results[i : i + step], job)
            cpu, wall = time.process_time() - c0, time.monotonic() - w0
            row["load_after"] = os.getloadavg()[0]
            bad = [f.file_name for f in db.file_rows() if f.status != "available"]
        finally:
            db.close()
        if bad:
            row["problems"].append(f"{len(bad)} row(s) not available after record_results, e.g. {bad[:3]}")
        row.update(batch=step, rows_per_s=len(results) / wall, cpu_ms_per_row=1000 * cpu / len(results))
    shutil.rmtree(base, ignore_errors=True)
    return row


NUMERIC = (
    "wall",
    "loop_wall",
    "loop_cpu",
    "cpu_per_result_ms",
    "loop_cpu_per_result_ms",
    "loop_ms_per_result",
    "busy_ms_per_result",
    "held_ms_per_result",
    "rec_cpu_per_result_ms",
    "db_cpu_per_result_ms",
    "msg_cpu_per_result_ms",
    "file_cpu_per_result_ms",
    "handouts_per_s",
    "task_msgs",
    "results_per_s",
    "db_rows_per_s",
    "r0_hwm_mib",
    "r0_cpu_all",
    "worker_hwm_mib",
    "load_before",
    "load_after",
)


def median_row(rows: list[dict]) -> dict:
    """The cell: medians of every figure over the runs (the first failing run is returned as is)."""
    bad = [r for r in rows if r["problems"]]
    if bad:
        return bad[0]
    out = dict(rows[0])
    for k in NUMERIC:
        vals = [r[k] for r in rows if r.get(k) is not None]
        out[k] = statistics.median(vals) if vals else None
    out["runs"] = len(rows)
    out["cpu_per_result_ms_all"] = [round(r["cpu_per_result_ms"], 4) for r in rows]
    out["loop_ms_per_result_all"] = [round(r["loop_ms_per_result"], 4) for r in rows]
    return out


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope, or None with fewer than two distinct x."""
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else fmt.format(x)


COLUMNS = [
    ("db", "db", "{}"),
    ("ranks", "-n", "{}"),
    ("files", "files", "{}"),
    ("mode", "mode", "{}"),
    ("loop_ms_per_result", "r0 loop ms/result", "{:.3f}"),
    ("busy_ms_per_result", "loop busy", "{:.3f}"),
    ("loop_cpu_per_result_ms", "loop CPU", "{:.3f}"),
    ("held_ms_per_result", "in recorder", "{:.3f}"),
    ("msg_cpu_per_result_ms", "of which msg", "{:.3f}"),
    ("file_cpu_per_result_ms", "of which file", "{:.3f}"),
    ("rec_cpu_per_result_ms", "rec thread CPU", "{:.3f}"),
    ("cpu_per_result_ms", "all threads", "{:.3f}"),
    ("task_msgs", "TASKS msgs", "{:.0f}"),
    ("results_per_s", "results/s", "{:.0f}"),
    ("db_rows_per_s", "db rows/s", "{:.0f}"),
    ("r0_hwm_mib", "r0 peak MiB", "{:.1f}"),
    ("load_before", "load", "{:.1f}"),
]


def ab_factors(cells: list[dict], kind: str, files: int, key: str, a_mode: str, b_mode: str) -> list[float]:
    """KEY in A_MODE / KEY in B_MODE for each -n where both cells of KIND over FILES files succeeded."""
    ok = [c for c in cells if c["db"] == kind and c["files"] == files and not c["problems"]]
    b = {c["ranks"]: c[key] for c in ok if c.get("mode") == b_mode}
    return [round(c[key] / b[c["ranks"]], 2) for c in ok if c.get("mode") == a_mode and b.get(c["ranks"])]


def report(a: argparse.Namespace, cells: list[dict]) -> dict:
    print(f"\n== rank 0 under many ranks: {datagen.human(a.size_bytes)} files; median of {a.repeat} run(s) per row")
    print_table(
        [
            [_f(c.get(k), fmt) if fmt != "{}" else str(c.get(k, "")) for k, _h, fmt in COLUMNS]
            + ["ok" if not c["problems"] else "FAILED"]
            for c in cells
        ],
        [h for _k, h, _fmt in COLUMNS] + ["check"],
    )
    summary: dict = {}
    for kind in a.dbs:
        for mode in a.modes:
            ok = [c for c in cells if c["db"] == kind and c.get("mode") == mode and not c["problems"]]
            full = [c for c in ok if c["files"] == a.files]
            if not full:
                continue
            loop = statistics.median(c["loop_ms_per_result"] for c in full)
            s = summary.setdefault(kind, {})[mode] = {
                "rank0_loop_ms_per_result": loop,
                "rank0_loop_capacity_results_per_s": 1000 / loop if loop else None,
                "rank0_cpu_ms_per_result": statistics.median(c["cpu_per_result_ms"] for c in full),
                "recorder_thread_cpu_ms_per_result": statistics.median(c["rec_cpu_per_result_ms"] for c in full),
                "db_rows_per_s": statistics.median(
                    [c["db_rows_per_s"] for c in full if c.get("db_rows_per_s")] or [0.0]
                ),
                "mib_per_rank": slope([c["ranks"] for c in full], [c["r0_hwm_mib"] for c in full]),
            }
            at_n0 = [c for c in ok if c["ranks"] == min(a.rank_list)]
            per_file = slope([c["files"] for c in at_n0], [c["r0_hwm_mib"] for c in at_n0])
            if per_file is not None:
                s["kib_per_file"] = per_file * 1024
        both = summary.get(kind, {})
        both["factors"] = {
            f"{x}/{y}": {
                "loop": ab_factors(cells, kind, a.files, "loop_ms_per_result", x, y),
                "busy": ab_factors(cells, kind, a.files, "busy_ms_per_result", x, y),
            }
            for x, y in (("inline", "thread"), ("thread", "batched"), ("inline", "batched"))
            if x in a.modes and y in a.modes
        }
    for kind, modes in summary.items():
        for mode, s in modes.items():
            if mode not in MODES:
                continue
            line = (
                f"{kind}, {mode}: rank 0's loop {s['rank0_loop_ms_per_result']:.3f} ms per result "
                f"(capacity ~{s['rank0_loop_capacity_results_per_s']:.0f} results/s), all threads "
                f"{s['rank0_cpu_ms_per_result']:.3f} ms CPU, recorder thread "
                f"{s['recorder_thread_cpu_ms_per_result']:.3f} ms CPU, "
                f"database {s['db_rows_per_s']:.0f} rows/s inside record_results"
            )
            if s.get("mib_per_rank") is not None:
                line += f", rank 0 peak +{1024 * s['mib_per_rank']:.0f} KiB per rank"
            if s.get("kib_per_file") is not None:
                line += f", +{s['kib_per_file']:.2f} KiB per file"
            print(line)
        for pair, f in modes.get("factors", {}).items():
            if f["loop"]:
                print(
                    f"{kind}: {pair}: rank 0's loop per result x{statistics.median(f['loop']):.2f} "
                    f"(median over -n; per -n: {f['loop']}), loop busy per -n: {f['busy']}"
                )
    for c in cells:
        for p in c["problems"]:
            print(f"FAILED {c['db']} -n {c['ranks']} mode {c.get('mode')}: {p}", file=sys.stderr)
    if a.smoke:
        print("smoke run: checks only (one small run); the calibration figures come from full runs (docs/scaling.md)")
    return summary


def report_alone(rows: list[dict]) -> None:
    """The database's own rate (no MPI, one process): median rows/s per database."""
    for kind in dict.fromkeys(r["db"] for r in rows):
        ok = [r for r in rows if r["db"] == kind and not r["problems"]]
        for r in rows:
            if r["db"] == kind and r["problems"]:
                print(f"FAILED {kind} batch write alone: {r['problems'][0]}", file=sys.stderr)
        if ok:
            runs = ", ".join(f"{r['rows_per_s']:,.0f}" for r in ok)
            print(
                f"{kind} batch write alone (record_results, batches of {ok[0]['batch']}, no MPI): "
                f"{statistics.median(r['rows_per_s'] for r in ok):,.0f} rows/s, "
                f"{statistics.median(r['cpu_ms_per_row'] for r in ok):.3f} ms CPU per row "
                f"(runs: {runs}; "
                f"load {statistics.median(r['load_before'] for r in ok):.1f})"
            )


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    work = workdir_for(a.workdir, "legampi-scaling-")
    result: dict = {
        "benchmark": "rank0_scaling",
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "note": a.note,
        "machine": machine_info(),
        "config": {
            "ranks": a.rank_list,
            "files": a.files,
            "size": a.size_bytes,
            "dbs": a.dbs,
            "repeat": a.repeat,
            "modes": a.modes,
        },
    }
    print(f"work folder: {work}{' (kept)' if a.keep else ''}; load average {os.getloadavg()[0]:.1f}")
    cells: list[dict] = []
    alone: list[dict] = []
    try:
        keys = keys_in(work / "keys")
        t0 = time.perf_counter()
        entries = make_small_files(work / "inbox", a.files, a.size_bytes, keys.inbox_public())
        print(f"data: {len(entries)} Crypt4GH files of {datagen.human(a.size_bytes)}, {time.perf_counter() - t0:.1f} s")
        plan = [(kind, n, a.files) for kind in a.dbs for n in a.rank_list]
        if a.memory_files:
            plan += [(kind, min(a.rank_list), a.memory_files) for kind in a.dbs]
        for kind, n, files in plan:
            runs: dict[str, list[dict]] = {m: [] for m in a.modes}
            for _ in range(a.repeat):  # the modes interleaved: A, B, A, B... under the same load drift
                for mode in a.modes:
                    if runs[mode] and runs[mode][-1]["problems"]:
                        continue
                    try:
                        runs[mode].append(one_run(a, work, kind, n, keys, entries[:files], mode))
                    except Exception as exc:  # noqa: BLE001 - a broken run is a failed row, not hidden
                        runs[mode].append(
                            {"db": kind, "ranks": n, "files": files, "mode": mode, "problems": [repr(exc)]}
                        )
            for mode in a.modes:
                cells.append(median_row(runs[mode]))
                c = cells[-1]
                print(
                    f"  {kind} -n {n} {files} files, {mode}: "
                    + (
                        f"r0 loop {c['loop_ms_per_result']:.3f} ms/result (CPU {c['loop_cpu_per_result_ms']:.3f}, "
                        f"busy {c['busy_ms_per_result']:.3f}), "
                        f"all threads {c['cpu_per_result_ms']:.3f}, loop {c['loop_wall']:.1f} s, "
                        f"load {c['load_before']:.1f}"
                        if not c["problems"]
                        else "FAILED"
                    ),
                    flush=True,
                )
        for kind in a.dbs:
            for _ in range(a.repeat):
                try:
                    alone.append(batch_write_alone(a, work, kind, keys, entries))
                except Exception as exc:  # noqa: BLE001 - a broken run is a failed row, not hidden
                    alone.append({"db": kind, "problems": [f"{type(exc).__name__}: {exc}"]})
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["results"] = cells
    result["batch_write_alone"] = alone
    report_alone(alone)
    result["summary"] = report(a, cells)
    result["machine"]["loadavg_end"] = os.getloadavg()
    write_json(a.json, "rank0_scaling", result)
    return 1 if any(c["problems"] for c in cells + alone) else 0


if __name__ == "__main__":
    sys.exit(main())
