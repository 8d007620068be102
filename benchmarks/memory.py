#!/usr/bin/env python3
"""Memory benchmark: a worker's peak RSS must not grow with file size, rank 0's must barely grow per file.

Two series, each rank inside bookkeeping's wrapper, which records the rank's own peak RSS (VmHWM)
just before it exits:

* worker: one large file per run (default 40MB and 4GB), ``mpiexec -n 2 legampi process``; the
  worker streams in fixed-size buffers, so its peak should be the same for both sizes and <= 100 MB;
* rank 0: many 1 KiB files per run (default 1000, 5000, 20000), ``mpiexec -n W+1``; the slope of rank
  0's peak RSS over the file count is its memory per file (target <= 1 KiB per file); the peak at the
  start of the dispatch loop shows how much of it recovery, planning and claiming take.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import time
from pathlib import Path

# Run as a script: this folder is first on sys.path, so the siblings import.
import datagen
import numpy as np
from bookkeeping import (
    Entry,
    check_archive,
    database,
    encrypt_to,
    keys_in,
    link_all,
    make_small_files,
    prepare,
    print_table,
    report_end,
    run_process,
    run_step,
    tail,
    target,
    tool,
    workdir_for,
    write_json,
    write_manifest,
)
from ingest import machine_info

WORKER_TARGET = 100e6  # bytes of peak RSS for a worker rank
WORKER_GROWTH = 10e6  # largest minus smallest file's worker peak: "does not grow" within allocator noise
RANK0_TARGET = 1024.0  # bytes of rank 0 peak RSS per file

EPILOG = """\
measurement: peak RSS = the rank's own ru_maxrss / VmHWM (KiB), read in-process just before it exits;
MB = 10^6 bytes. Rank 0's memory per file is the least-squares slope of its peak over the file counts.
The large files are random plaintext made in memory, hashed and Crypt4GH-encrypted as a stream
(about 10 s per GB here); the run needs about 2.1 x the largest size free on disk.

checks: exit 0, every file archived with its sidecar and recorded `available`, nothing left in
processing, spot files decrypted and compared with the manifest (the large file in full). A failed
check exits 1; a missed target exits 1 only with --fail-on-target.

examples:
  python benchmarks/memory.py --smoke
  python benchmarks/memory.py --sizes 40MB,400MB --rank0-files 500,2000
  python benchmarks/memory.py                          # 40MB and 4GB; 1000, 5000, 20000 files
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="memory.py",
        description=__doc__.split("\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--sizes", "--size", default="40MB,4GB", help="one-file runs, comma list of plaintext sizes (default 40MB,4GB)"
    )
    p.add_argument(
        "--rank0-files",
        default="1000,5000,20000",
        help="file counts for rank 0's memory per file (default 1000,5000,20000; '' skips)",
    )
    p.add_argument("--workers", "-W", type=int, default=2, help="workers in the rank 0 runs (default 2)")
    p.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite", help="tracking database")
    p.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--smoke", action="store_true", help="5MB, 50MB; 100, 600 files; seconds")
    p.add_argument("--fail-on-target", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--workdir", type=Path, help="work folder (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--json", type=Path, help="results path (default benchmarks/results/memory-<time>.json)")
    p.add_argument("--note", default="", help="free text stored in the JSON (e.g. 'machine shared')")
    a = p.parse_args(argv)
    if a.smoke:
        a.sizes, a.rank0_files = "5MB,50MB", "100,600"
    try:
        a.size_list = [datagen.parse_size(x) for x in a.sizes.split(",") if x.strip()]
        a.count_list = [int(x) for x in a.rank0_files.split(",") if x.strip()]
    except ValueError as exc:
        p.error(str(exc))
    if min(a.count_list, default=1) < 1 or a.workers < 1:
        p.error("--rank0-files and --workers need positive numbers")
    if len(a.count_list) == 1:
        p.error("--rank0-files needs at least two counts for a slope")
    return a


def _plain_chunks(size: int, seed: int, chunk: int = 4 << 20):
    """Random plaintext in memory, CHUNK bytes at a time (numpy is faster than os.urandom for GBs)."""
    rng = np.random.default_rng(seed)
    left = size
    while left > 0:
        n = min(chunk, left)
        yield rng.bytes(n)
        left -= n


def make_large(folder: Path, size: int, pk: bytes, seed: int) -> Entry:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"large-{size}.dat.c4gh"
    got, md5, sha = encrypt_to(folder / name, _plain_chunks(size, seed), pk)
    return Entry(name, got, md5, sha, (folder / name).stat().st_size)


def one_run(
    a: argparse.Namespace, work: Path, label: str, keys, entries: list[Entry], ranks: int, src: Path, spot: int = 3
) -> dict:
    """Register ENTRIES (already in SRC), process them with RANKS ranks; the row with every rank's usage."""
    base = work / f"run-{label}"
    row: dict = {"label": label, "files": len(entries), "ranks": ranks, "problems": []}
    with database(a.db, base, a.pg_dsn) as url:
        conf, spaces = prepare(base, keys, url)
        link_all(src, spaces["processing"], entries)
        manifest = base / "manifest.tsv"
        write_manifest(manifest, entries)
        reg = run_step(
            "register",
            [tool("legampi"), "-c", str(conf), "register", str(manifest), "--dataset", f"EGAD-MEM-{label.upper()}"],
            base / "register.log",
        )
        if reg.code != 0:
            row["problems"].append(f"register exit {reg.code}: {tail(reg.log)}")
            return row
        pr = run_process(conf, ranks, base / "usage", base / "process.log")
        row.update(wall=round(pr.wall, 3), usage=pr.usage)
        if pr.code != 0:
            row["problems"].append(f"process exit {pr.code}: {tail(pr.log)}")
            return row
        if sorted(pr.usage) != list(range(ranks)):
            row["problems"].append(f"usage missing for ranks {sorted(set(range(ranks)) - set(pr.usage))}")
            return row
        row["problems"] += check_archive(conf, spaces, entries, keys, spot)
        row["rank0_kb"] = pr.usage[0]["maxrss_kb"]
        row["rank0_loop_start_kb"] = pr.usage[0].get("hwm_loop_start_kb")
        row["worker_kb"] = max(pr.usage[r]["maxrss_kb"] for r in range(1, ranks))
    return row


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of YS over XS."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    work = workdir_for(a.workdir, "legampi-memory-")
    need = 2.1 * max(a.size_list, default=0)
    free = shutil.disk_usage(work).free
    if need > free:
        print(
            f"error: the {datagen.human(max(a.size_list))} run needs about {datagen.human(need)} free in "
            f"{work}, only {datagen.human(free)} is free (use --workdir elsewhere or a smaller --sizes)",
            file=sys.stderr,
        )
        return 2
    result: dict = {
        "benchmark": "memory",
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "note": a.note,
        "machine": machine_info(),
        "config": {"sizes": a.size_list, "rank0_files": a.count_list, "workers": a.workers, "db": a.db},
    }
    print(f"work folder: {work}{' (kept)' if a.keep else ''}")
    worker_rows: list[dict] = []
    rank0_rows: list[dict] = []
    try:
        keys = keys_in(work / "keys")
        pk = keys.inbox_public()
        for i, size in enumerate(a.size_list):
            src = work / f"size-{size}"
            t0 = time.perf_counter()
            e = make_large(src, size, pk, seed=i + 1)
            print(f"{datagen.human(size)}: generated in {time.perf_counter() - t0:.1f} s", flush=True)
            label = f"size-{size}"
            row = _guarded(lambda lb=label, e=e, src=src: one_run(a, work, lb, keys, [e], 2, src), label)
            row["size"] = size
            worker_rows.append(row)
            shutil.rmtree(work / f"run-size-{size}", ignore_errors=False)
            shutil.rmtree(src)
        if a.count_list:
            src = work / "files-src"
            t0 = time.perf_counter()
            entries = make_small_files(src, max(a.count_list), 1024, pk)
            print(f"{len(entries)} files of 1 KiB: generated in {time.perf_counter() - t0:.1f} s", flush=True)
            for n in a.count_list:
                row = _guarded(
                    lambda n=n, src=src: one_run(a, work, f"files-{n}", keys, entries[:n], a.workers + 1, src),
                    f"files-{n}",
                )
                rank0_rows.append(row)
                shutil.rmtree(work / f"run-files-{n}")
    finally:
        if not a.keep:
            shutil.rmtree(work)
    result["worker_runs"], result["rank0_runs"] = worker_rows, rank0_rows
    summary = report(a, worker_rows, rank0_rows)
    result["summary"] = summary
    result["machine"]["loadavg_end"] = os.getloadavg()
    write_json(a.json, "memory", result)
    failed = [r for r in worker_rows + rank0_rows if r["problems"]]
    if failed:
        return 1
    return 1 if a.fail_on_target and not all(summary["targets"].values()) else 0


def _guarded(fn, label: str) -> dict:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a broken run is reported as a failed row, not hidden
        return {"label": label, "problems": [f"{type(exc).__name__}: {exc}"]}


def _mb(kb: float | None) -> str:
    return "-" if kb is None else f"{kb * 1024 / 1e6:.1f}"


def report(a: argparse.Namespace, worker_rows: list[dict], rank0_rows: list[dict]) -> dict:
    summary: dict = {"targets": {}}
    if worker_rows:
        print("\n== worker peak RSS, one file, mpiexec -n 2 (MB = 10^6 bytes)")
        print_table(
            [
                [
                    datagen.human(r.get("size", 0)),
                    _mb(r.get("worker_kb")),
                    _mb(r.get("rank0_kb")),
                    f"{r['wall']:.2f}" if "wall" in r else "-",
                    f"{r['size'] / 1e6 / r['wall']:.0f}" if r.get("wall") else "-",
                    "ok" if not r["problems"] else "FAILED",
                ]
                for r in worker_rows
            ],
            ["file", "worker MB", "rank 0 MB", "wall s", "MB/s", "check"],
        )
        ok = [r for r in worker_rows if not r["problems"]]
        if ok:
            peaks = [r["worker_kb"] * 1024 for r in ok]
            growth = max(peaks) - min(peaks) if len(ok) > 1 else 0.0
            summary.update(worker_peak_max=max(peaks), worker_growth=growth)
            summary["targets"]["worker <= 100 MB"] = max(peaks) <= WORKER_TARGET
            summary["targets"]["worker does not grow with size"] = growth <= WORKER_GROWTH
            print(
                f"worker peak {max(peaks) / 1e6:.1f} MB{target(a, f'<= {WORKER_TARGET / 1e6:.0f}')}; growth from "
                f"the smallest to the largest file {growth / 1e6:+.1f} MB" + target(a, f"<= {WORKER_GROWTH / 1e6:.0f}")
            )
    if rank0_rows:
        print(f"\n== rank 0 peak RSS against the number of 1 KiB files, mpiexec -n {a.workers + 1}")
        print_table(
            [
                [
                    str(r.get("files", "-")),
                    _mb(r.get("rank0_kb")),
                    _mb(r.get("rank0_loop_start_kb")),
                    _mb(r.get("worker_kb")),
                    f"{r['wall']:.2f}" if "wall" in r else "-",
                    "ok" if not r["problems"] else "FAILED",
                ]
                for r in rank0_rows
            ],
            ["files", "rank 0 MB", "before loop", "worker MB", "wall s", "check"],
        )
        ok = [r for r in rank0_rows if not r["problems"]]
        if len(ok) >= 2:
            xs = [r["files"] for r in ok]
            per_file = slope(xs, [r["rank0_kb"] * 1024 for r in ok])
            summary["rank0_bytes_per_file"] = per_file
            summary["targets"]["rank 0 <= 1 KiB per file"] = per_file <= RANK0_TARGET
            before = None
            if all(r.get("rank0_loop_start_kb") for r in ok):
                before = slope(xs, [r["rank0_loop_start_kb"] * 1024 for r in ok])
                summary["rank0_bytes_per_file_before_loop"] = before
            extra = (
                ""
                if before is None
                else f"; {before / 1024:.2f} KiB of it already before the dispatch loop (recovery, plan, claim)"
            )
            goal = "" if a.smoke else f"; target <= {RANK0_TARGET / 1024:.0f} KiB"
            print(f"rank 0 grows {per_file / 1024:.2f} KiB per file (least squares{goal}){extra}")
    return report_end(worker_rows + rank0_rows, "label", summary, a.smoke)


if __name__ == "__main__":
    sys.exit(main())
