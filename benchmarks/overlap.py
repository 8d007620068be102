#!/usr/bin/env python3
"""Issue 14: one backlog drained by one `legampi process` job, or by two jobs started together.

    python benchmarks/overlap.py --smoke                      # seconds: 12 x 256 KiB, -n 2, SQLite; checks
    python benchmarks/overlap.py --files 60 --size 4MiB -n 2 --repeat 3 --db sqlite,postgresql

Each round, on fresh workspaces and databases over the same hard-linked inputs: "1 job" is one
`mpiexec -n N legampi process`, "2 jobs" is two of them started at once (N ranks each, so twice the
ranks in all); the two contenders alternate which runs first. Wall time is from the first start to the
last exit (data generation, init-db and register are not timed). Every run is checked: each job exits
0, every file is archived once (sidecar, row `available`, spot decryption), no file is in two jobs'
results. Printed: the median wall of each, the ratio 2 jobs / 1 job (below 1: the second job helped)
and each job's share of the files. With claims in batches both jobs take a share; before, the first
job claimed everything and the second exited with none.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import datagen
from bookkeeping import (
    Entry,
    check_archive,
    database,
    keys_in,
    link_all,
    make_small_files,
    prepare,
    run_step,
    tool,
    workdir_for,
    write_json,
    write_manifest,
)
from datagen import KeySet

CONTENDERS = ("1 job", "2 jobs")
SUMMARY = re.compile(r"^job (\S+): (\d+) file\(s\)", re.M)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=60)
    p.add_argument("--size", default="4MiB", help="plaintext bytes per file (e.g. 256KiB, 4MiB)")
    p.add_argument("-n", "--ranks", type=int, default=2, help="mpiexec -n of each job (default 2: one worker)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--db", default="sqlite,postgresql", help="comma list of sqlite,postgresql")
    p.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--json", type=Path)
    p.add_argument("--smoke", action="store_true", help="12 x 256 KiB, -n 2, SQLite, one round: checks only")
    a = p.parse_args(argv)
    if a.smoke:
        a.files, a.size, a.ranks, a.repeat, a.db = 12, "256KiB", 2, 1, "sqlite"
    a.size_bytes = datagen.parse_size(a.size)
    a.dbs = [x.strip() for x in a.db.split(",") if x.strip()]
    return a


def run_jobs(conf: Path, jobs: int, ranks: int, logs: Path) -> tuple[float, list[tuple[int, str]]]:
    """Start JOBS `process` jobs at once; the wall time to the last exit and each one's (status, output)."""
    cmd = [tool("mpiexec"), "-n", str(ranks), tool("legampi"), "-c", str(conf), "process"]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
        for _ in range(jobs)
    ]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    for i, out in enumerate(outs):
        (logs / f"job{i + 1}.log").write_text(out, encoding="utf-8")
    return wall, [(p.returncode, out) for p, out in zip(procs, outs, strict=True)]


def each_once(conf: Path) -> list[str]:
    """Problems: a file recorded available more than once, or claimed by two jobs."""
    from legampi.config import load
    from legampi.db import Database

    db = Database.connect(load(str(conf)).database)
    try:
        done = collections.Counter(e["file_id"] for e in db.events(event="available"))
        owners = collections.defaultdict(set)
        for e in db.events(event="available"):
            owners[e["file_id"]].add(e["job_id"])
    finally:
        db.close()
    twice = [f for f, n in done.items() if n > 1] + [f for f, jobs in owners.items() if len(jobs) > 1]
    return [f"{len(twice)} file(s) archived twice or by two jobs, e.g. {twice[:3]}"] if twice else []


def one_run(
    a: argparse.Namespace, work: Path, keys: KeySet, kind: str, jobs: int, rnd: int, entries: list[Entry]
) -> dict:
    """One contender once on fresh workspaces and a fresh database: wall, shares, problems."""
    base = work / f"run-{kind}-{jobs}-{rnd}"
    row: dict = {"db": kind, "contender": CONTENDERS[jobs - 1], "round": rnd, "problems": []}
    with database(kind, base, a.pg_dsn) as url:
        conf, spaces = prepare(base, keys, url)
        link_all(work / "inbox", spaces["processing"], entries)
        reg = run_step(
            "register", [tool("legampi"), "-c", str(conf), "register", str(work / "manifest.tsv")], base / "r"
        )
        if reg.code != 0:
            row["problems"].append(f"register exit {reg.code}")
            return row
        row["wall"], results = run_jobs(conf, jobs, a.ranks, base)
        shares = []
        for code, out in results:
            m = SUMMARY.search(out)
            if code != 0 or m is None:
                row["problems"].append(f"process exit {code}: {out.strip().splitlines()[-3:]}")
            shares.append(int(m.group(2)) if m else 0)
        row["shares"] = shares
        if sum(shares) != len(entries):
            row["problems"].append(f"the jobs archived {sum(shares)} file(s) of {len(entries)}")
        row["problems"] += check_archive(conf, spaces, entries, keys) + each_once(conf)
    return row


def report(a: argparse.Namespace, rows: list[dict]) -> dict:
    """Median walls, the ratio 2 jobs / 1 job and the shares, per database; every failed check."""
    load = os.getloadavg()
    print(f"\n{a.files} x {datagen.human(a.size_bytes)}, mpiexec -n {a.ranks} per job, {a.repeat} round(s)")
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPU(s)")
    summary: dict = {"load": load, "by_db": {}}
    for kind in a.dbs:
        walls = {
            c: [r["wall"] for r in rows if r["db"] == kind and r["contender"] == c and "wall" in r] for c in CONTENDERS
        }
        if not all(walls.values()):
            continue
        med = {c: statistics.median(v) for c, v in walls.items()}
        ratio = med["2 jobs"] / med["1 job"]
        shares = [r["shares"] for r in rows if r["db"] == kind and r["contender"] == "2 jobs"]
        summary["by_db"][kind] = {"walls": walls, "median": med, "ratio": ratio, "shares": shares}
        print(
            f"{kind:10}  1 job {med['1 job']:6.2f} s   2 jobs {med['2 jobs']:6.2f} s   ratio 2/1 {ratio:4.2f}   "
            f"shares of the 2 jobs {shares}   (walls {walls})"
        )
    failed = 0
    for r in rows:
        for p in r["problems"]:
            failed += 1
            print(f"FAILED {r['db']} {r['contender']} round {r['round']}: {p}", file=sys.stderr)
    summary["failed"] = failed
    if a.smoke:
        print("smoke run: checks only; the ratio is measured in full runs (docs/benchmarks.md)")
    return summary


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    work = workdir_for(a.workdir, "legampi-overlap-")
    keys = keys_in(work / "keys")
    entries = make_small_files(work / "inbox", a.files, a.size_bytes, keys.inbox_public())
    write_manifest(work / "manifest.tsv", entries)
    rows = []
    for kind in a.dbs:
        for rnd in range(a.repeat):
            order = (1, 2) if rnd % 2 == 0 else (2, 1)  # alternate which contender runs first
            rows += [one_run(a, work, keys, kind, jobs, rnd, entries) for jobs in order]
    summary = report(a, rows)
    write_json(a.json, "overlap", {"args": {k: str(v) for k, v in vars(a).items()}, "rows": rows, **summary})
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
