#!/usr/bin/env python3
"""Both ends of issue 15: many tiny files, and one huge file, beside the ideal script.

    python benchmarks/smallfiles.py --smoke             # seconds: profile 40 files, compare on 40 x 1 KiB
    python benchmarks/smallfiles.py profile --files 2000  # where a worker's time per small file goes
    python benchmarks/smallfiles.py small --repeat 3    # legampi -n 3 vs ideal, 2,000 x 1 KiB (ingest.py)
    python benchmarks/smallfiles.py small --ab --db postgresql://127.0.0.1/bench  # group_files 0 vs 64
    python benchmarks/smallfiles.py huge --size 1GB     # legampi -n 2 vs ideal (one process), one file

`profile` runs the worker's pipeline (`stream.process_file`) in this process on fresh 1 KiB Crypt4GH
files and times the system calls and set-up steps it makes per file (wrapping os.fsync, os.link,
os.unlink, the header sealing and key derivation), so the per-file cost breakdown in
docs/benchmarks.md can be re-measured. `small` and `huge` hand over to benchmarks/ingest.py, which
interleaves the contenders on the same files and reports ratios.
"""

from __future__ import annotations

import argparse
import os
import stat
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datagen

HERE = Path(__file__).resolve().parent


class Timers:
    """Wall time and calls per category, from wrapped functions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, owner: Any, name: str, label: str | Callable[..., str]) -> Callable[[], None]:
        real = getattr(owner, name)

        def timed(*a: Any, **kw: Any) -> Any:
            key = label(*a) if callable(label) else label
            t0 = time.perf_counter()
            try:
                return real(*a, **kw)
            finally:
                self.seconds[key] += time.perf_counter() - t0
                self.calls[key] += 1

        setattr(owner, name, timed)
        return lambda: setattr(owner, name, real)


def _fsync_kind(fd: int) -> str:
    return "fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file"


def profile(files: int, workdir: Path, ordered: bool = True, group: int = 0) -> dict[str, tuple[float, float]]:
    """ms per file and calls per file of each category, over FILES 1 KiB files (process_file in-process).

    ordered=False: as if the file system did not order directory operations (a folder fsync after the
    sidecar link and another after the archive link, as before issue 15). group=N: the worker's grouped
    path (grouping.GroupedWork, N files made durable together), as `legampi process` runs it."""
    from legampi import archive, grouping, stream
    from legampi import keys as lkeys
    from legampi.formats import crypt4gh as c4gh

    ks = datagen.make_keys(workdir / "keys")
    plan = [(f"s{i:05d}.dat", 1024) for i in range(files)]
    inbox, end = workdir / "inbox", workdir / "archive"
    end.mkdir()
    made = datagen.generate(inbox, plan, ks, workers=2)
    saved, archive.ORDERED_DIR_FS = archive.ORDERED_DIR_FS, archive.ORDERED_DIR_FS if ordered else frozenset()
    ctx = stream.PipelineContext(
        processing=inbox,
        end_storage=end,
        quarantine=None,
        extensions=(".c4gh",),
        inbox_secret_key=ks.inbox_secret(),
        archive_public_key=ks.archive_public(),
    )
    t = Timers()
    undo = [
        t.wrap(os, "fsync", _fsync_kind),
        t.wrap(os, "link", "link"),
        t.wrap(os, "unlink", "unlink"),
        t.wrap(c4gh, "read_header", "header open (key derivation)"),
        t.wrap(c4gh, "build_header", "header seal"),
        t.wrap(stream, "fingerprint", "key fingerprint"),
        t.wrap(lkeys, "fingerprint", "key fingerprint"),
    ]
    work = grouping.GroupedWork(ctx, 0, group) if group else None
    t0 = time.perf_counter()
    try:
        tasks = [stream.FileTask(f"F{i}", "D", f.name, f.md5, f.sha256, f.enc_size) for i, f in enumerate(made)]
        if work is not None:
            futures = [work(task) for task in tasks]
            work.flush()
            results = [fut.result() for fut in futures]
        else:
            results = [stream.process_file(task, ctx) for task in tasks]
        for r in results:
            if r.status != "available":
                raise SystemExit(f"profile: {r.rel} failed: {r.error}")
    finally:
        for u in undo:
            u()
        archive.ORDERED_DIR_FS = saved
    total = time.perf_counter() - t0
    out = {k: (1000 * s / files, t.calls[k] / files) for k, s in sorted(t.seconds.items(), key=lambda kv: -kv[1])}
    out["rest (python, crypto, open/read/write)"] = (1000 * (total - sum(t.seconds.values())) / files, 0.0)
    out["total per file"] = (1000 * total / files, 0.0)
    return out


def print_profile(rows: dict[str, tuple[float, float]]) -> None:
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'category':42} {'ms/file':>8} {'calls/file':>10}")
    for k, (ms, calls) in rows.items():
        print(f"{k:42} {ms:8.3f} {calls:10.2f}")


def ab(files: int, rounds: int, group: int = 64) -> None:
    """Interleaved rounds of the worker pipeline: two folder fsyncs per file, one (ordered), and files
    made durable in groups of GROUP (grouping.GroupedWork)."""
    runs = {"two folder fsyncs per file": (False, 0), "one (ordered)": (True, 0), f"groups of {group}": (True, group)}
    totals: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        for name, (ordered, grouped) in runs.items():
            with tempfile.TemporaryDirectory(prefix="legampi-small-") as d:
                totals[name].append(profile(files, Path(d), ordered, grouped)["total per file"][0])
    med = {k: statistics.median(v) for k, v in totals.items()}
    print(f"load average {os.getloadavg()[0]:.1f}; {rounds} rounds x {files} files, median ms/file")
    first = next(iter(med.values()))
    for name, ms in med.items():
        print(f"{name:28} {ms:7.2f} ms/file  speed-up {first / ms:5.2f}x")


def threads(size: int, rounds: int, workdir: Path) -> None:
    """One file of SIZE: the ideal script (one process) vs the worker pipeline in this process, serial
    (threads_per_file 1) and with the plaintext hashes on their own thread (2); interleaved rounds."""
    import shutil

    import baselines

    from legampi import stream

    ks = datagen.make_keys(workdir / "keys")
    (made,) = datagen.generate(workdir / "inbox", [("huge.dat", size)], ks)
    task = stream.FileTask("F1", "D", made.name, made.md5, made.sha256, made.enc_size)
    secs: dict[str, list[float]] = defaultdict(list)
    for i in range(rounds):
        out = workdir / f"out{i}"
        t0 = time.perf_counter()
        run = baselines.ideal([made], out / "ideal", ks, 1)
        secs["ideal"].append(time.perf_counter() - t0)
        assert all(o.md5 == made.md5 for o in run.outcomes), "ideal: wrong md5"
        for tpf in ("1", "2"):
            (end := out / f"legampi{tpf}").mkdir(parents=True)
            ctx = stream.PipelineContext(
                processing=workdir / "inbox",
                end_storage=end,
                quarantine=None,
                extensions=(".c4gh",),
                inbox_secret_key=ks.inbox_secret(),
                archive_public_key=ks.archive_public(),
                threads_per_file=tpf,
            )
            t0 = time.perf_counter()
            r = stream.process_file(task, ctx)
            secs[f"legampi threads_per_file={tpf}"].append(time.perf_counter() - t0)
            assert r.status == "available", r.error
        shutil.rmtree(out)
    ideal_s = statistics.median(secs["ideal"])
    print(f"load average {os.getloadavg()[0]:.1f}; one {datagen.human(size)} file, {rounds} interleaved rounds")
    for name, v in secs.items():
        med = statistics.median(v)
        print(f"{name:32} {size / med / 1e6:8.1f} MB/s  {ideal_s / med:5.2f}x ideal")


def small_ab(files: int, rounds: int, db: str, groups: list[int], workdir: Path) -> int:
    """Rounds of ingest.py runs (ideal and legampi back to back, on the same files), one per `group_files`
    value in GROUPS in turn (0: every file made durable on its own), so the variants share the machine's
    load; legampi/ideal per variant. PostgreSQL: ingest.py registers into the database it is given, so
    each run gets a fresh one (dropped and created again through psql)."""
    import json
    import subprocess

    base, _, name = db.rpartition("/")
    ratios: dict[int, list[float]] = defaultdict(list)
    code = 0
    for i in range(rounds):
        for group in groups:
            if db.startswith("postgres"):
                for sql in (f"drop database if exists {name}", f"create database {name}"):
                    subprocess.run(["psql", "-q", f"{base}/postgres", "-c", sql], check=True)
            out = workdir / f"round{i}-group{group}.json"
            argv = ["--files", str(files), "--size", "1KiB", "-W", "2", "--repeat", "1", "--warmup", "0"]
            code = max(code, _ingest([*argv, "--json", str(out), *_COMMON, "--legampi-db", db], group))
            ratios[group].append(json.loads(out.read_text())["ratios"]["legampi/ideal (full)"])
            print(f"load average {os.getloadavg()[0]:.1f} after round {i} group_files={group}", flush=True)
    which = "PostgreSQL" if db.startswith("postgres") else "SQLite"
    for group, r in ratios.items():
        print(f"{which}, group_files={group}, {rounds} rounds: legampi/ideal {r}; median {statistics.median(r):.2f}x")
    return code


_COMMON = ["--contenders", "ideal,legampi", "--modes", "full", "--no-balance-real"]


def _ingest(argv: list[str], group: int | None = None) -> int:
    """benchmarks/ingest.py's main; GROUP: legampi's [func_conf] group_files (None: its default)."""
    import configparser

    sys.path.insert(0, str(HERE))
    import ingest  # benchmarks/ingest.py

    real = ingest.write_legampi_config

    def write_config(path: Path, *a: Any, **kw: Any) -> Any:
        spaces = real(path, *a, **kw)
        if group is not None:
            cfg = configparser.ConfigParser()
            cfg.read(path)
            cfg["func_conf"]["group_files"] = str(group)
            with open(path, "w", encoding="utf-8") as f:
                cfg.write(f)
        return spaces

    ingest.write_legampi_config = write_config
    try:
        return int(ingest.main(argv))
    finally:
        ingest.write_legampi_config = real


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", choices=("profile", "ab", "threads", "small", "huge"), default="profile")
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--size", default="1GB", help="huge: the one file's size")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--db", default="sqlite", help="legampi database for small/huge (sqlite or a URL)")
    p.add_argument("--group", type=int, default=64, help="files a worker makes durable together (0: one by one)")
    p.add_argument("--ab", action="store_true", help="small: rounds alternate --group 0 and --group N")
    p.add_argument("--smoke", action="store_true", help="profile 40 files and compare on 40 x 1 KiB; seconds")
    a = p.parse_args(argv)
    common = ["--contenders", "ideal,legampi", "--modes", "full", "--legampi-db", a.db, "--no-balance-real"]
    if a.smoke:
        with tempfile.TemporaryDirectory(prefix="legampi-small-") as d:
            print_profile(profile(40, Path(d), group=a.group))
        return _ingest(["--files", "40", "--size", "1KiB", "--repeat", "1", "--warmup", "0", *common])
    if a.what == "profile":
        with tempfile.TemporaryDirectory(prefix="legampi-small-") as d:
            print_profile(profile(a.files, Path(d), group=a.group))
        return 0
    if a.what == "ab":
        ab(a.files, a.repeat, a.group)
        return 0
    if a.what == "threads":
        with tempfile.TemporaryDirectory(prefix="legampi-huge-") as d:
            threads(datagen.parse_size(a.size), a.repeat, Path(d))
        return 0
    if a.what == "small" and (a.ab or a.db.startswith("postgres")):
        groups = [0, a.group] if a.ab else [a.group]
        with tempfile.TemporaryDirectory(prefix="legampi-small-") as d:
            return small_ab(a.files, a.repeat, a.db, groups, Path(d))
    if a.what == "small":  # ingest.py runs legampi with W workers + rank 0: -W 2 is `mpiexec -n 3`
        return _ingest(
            ["--files", str(a.files), "--size", "1KiB", "-W", "2", "--repeat", str(a.repeat), *common], a.group
        )
    return _ingest(["--files", "1", "--size", a.size, "-W", "1", "--repeat", str(a.repeat), "--verify", "1", *common])


if __name__ == "__main__":
    sys.exit(main())
