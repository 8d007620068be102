#!/usr/bin/env python3
"""Both ends of issue 15: many tiny files, and one huge file, beside the ideal script.

    python benchmarks/smallfiles.py --smoke             # seconds: profile 40 files, compare on 40 x 1 KiB
    python benchmarks/smallfiles.py profile --files 2000  # where a worker's time per small file goes
    python benchmarks/smallfiles.py small --repeat 3    # legampi -n 3 vs ideal, 2,000 x 1 KiB (ingest.py)
    python benchmarks/smallfiles.py small --ab --db postgresql://127.0.0.1/bench  # group_files 0 vs 64
    python benchmarks/smallfiles.py huge --size 1GB     # ideal (one process) vs legampi -n 2, threads_per_file 1 / auto
    python benchmarks/smallfiles.py stages --size 1GB   # CPU seconds per stage; pipeline serial vs spread

`profile` runs the worker's pipeline (`stream.process_file`) in this process on fresh 1 KiB Crypt4GH
files and times the system calls and set-up steps it makes per file (wrapping os.fsync, os.link,
os.unlink, the header sealing and key derivation), so the per-file cost breakdown in
docs/benchmarks.md can be re-measured. `small` and `huge` hand over to benchmarks/ingest.py, which
interleaves the contenders on the same files and reports ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
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


def _context(workdir: Path, end: Path, ks: Any, threads_per_file: str, **extra: Any) -> Any:
    """The worker's pipeline context over WORKDIR/inbox into END, as `threads` and `stages` both use it."""
    from legampi import stream

    return stream.PipelineContext(
        processing=workdir / "inbox",
        end_storage=end,
        quarantine=None,
        extensions=(".c4gh",),
        inbox_secret_key=ks.inbox_secret(),
        archive_public_key=ks.archive_public(),
        threads_per_file=threads_per_file,
        **extra,
    )


def threads(size: int, rounds: int, workdir: Path) -> None:
    """One file of SIZE: the ideal script (one process) vs the worker pipeline in this process, serial
    (threads_per_file 1) and spread over 2 and 3 threads (legampi.spread); interleaved rounds."""
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
        for tpf in ("1", "2", "3"):
            (end := out / f"legampi{tpf}").mkdir(parents=True)
            ctx = _context(workdir, end, ks, tpf)
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


def _cpu_children() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def huge(size: int, rounds: int, workdir: Path, db: str, settings: tuple[str, ...] = ("1", "auto")) -> int:
    """One file of SIZE: the ideal script (one process) vs `mpiexec -n 2 legampi process` (one worker)
    with `[func_conf] threads_per_file` 1 (serial, before) and auto (the spread pipeline), interleaved
    rounds; wall time, the load average around each run, and user+sys CPU seconds of all processes."""
    import random

    import baselines
    import ingest

    ks = datagen.make_keys(workdir / "keys")
    (made,) = datagen.generate(workdir / "inbox", [("huge.dat", size)], ks)
    datagen.write_manifest(workdir / "manifest.tsv", [made])
    secs: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    loads: list[float] = []
    for i in range(rounds):
        for name in ("ideal", *(f"legampi threads_per_file={t}" for t in settings)):
            loads.append(os.getloadavg()[0])
            c0, t0 = _cpu_children(), time.perf_counter()
            if name == "ideal":
                run = baselines.ideal([made], workdir / "out" / "ideal", ks, 1)
                run.wall = time.perf_counter() - t0
            else:
                ingest.FUNC_CONF_EXTRA = {"threads_per_file": name.rsplit("=", 1)[1]}
                run = ingest.run_legampi(workdir, [made], 1, "full", db)
            cpu[name].append(_cpu_children() - c0)
            secs[name].append(run.wall)
            problems = ingest.verify(run, [made], ks, "all", random.Random(1)) if i == rounds - 1 else []
            if run.status != "ok" or problems:
                print(f"{name}: {run.status} {run.error or ''} {problems}")
                return 1
            shutil.rmtree(workdir / "out", ignore_errors=True)
    ideal_s = statistics.median(secs["ideal"])
    print(f"one {datagen.human(size)} file, {rounds} interleaved rounds, {os.cpu_count()} cores")
    print(f"load average (1 min) before each run: {' '.join(f'{x:.1f}' for x in loads)}")
    for name, v in secs.items():
        med = statistics.median(v)
        print(
            f"{name:30} {size / med / 1e6:7.1f} MB/s  {ideal_s / med:5.2f}x ideal  "
            f"wall {med:6.2f} s  cpu {statistics.median(cpu[name]):6.2f} s  (runs: {' '.join(f'{x:.2f}' for x in v)})"
        )
    return 0


def stages(size: int, workdir: Path) -> None:
    """CPU seconds (user+sys, this process) of each stage of one file of SIZE, run alone in turn, and the
    whole pipeline serial vs spread: what an idle 2-core machine can give (the load does not change CPU
    time much, so this view holds on a shared machine where wall-clock ratios do not)."""
    import hashlib

    from crypt4gh import sodium

    from legampi import spread, stream
    from legampi.formats import crypt4gh as c4gh

    ks = datagen.make_keys(workdir / "keys")
    (made,) = datagen.generate(workdir / "inbox", [("huge.dat", size)], ks)
    seg, key = c4gh.SEGMENT_SIZE, os.urandom(32)
    batch = bytearray(os.urandom(4 << 20))
    out = bytearray(len(batch) // seg * c4gh.CIPHER_SEGMENT_SIZE)
    reps = max(1, size // len(batch))
    ov, bv = memoryview(out), memoryview(batch)

    def enc() -> None:
        for _ in range(reps):
            for j in range(len(batch) // seg):
                sodium.chacha20poly1305_encrypt(ov[j * c4gh.CIPHER_SEGMENT_SIZE :], bv[j * seg : (j + 1) * seg], key)

    def dec() -> None:
        for _ in range(reps):
            for j in range(len(batch) // seg):
                sodium.chacha20poly1305_decrypt(
                    bv[j * seg :], ov[j * c4gh.CIPHER_SEGMENT_SIZE : (j + 1) * c4gh.CIPHER_SEGMENT_SIZE], key
                )

    enc()  # out holds valid segments for dec()

    def hashes(algo: str) -> Callable[[], None]:
        def run() -> None:
            h = hashlib.new(algo)
            for _ in range(reps):
                h.update(batch)

        return run

    def read() -> None:
        buf = bytearray(len(out))
        with open(made.path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass

    def write() -> None:
        target = workdir / "w.tmp"
        with open(target, "wb", buffering=0) as f:
            for _ in range(reps):
                f.write(out)
            os.fsync(f.fileno())
        target.unlink()

    rows = [
        ("read", read),
        ("decrypt", dec),
        ("md5", hashes("md5")),
        ("sha256 plain", hashes("sha256")),
        ("encrypt", enc),
        ("sha256 archive", hashes("sha256")),
        ("write + fsync", write),
    ]
    print(f"one {datagen.human(size)} file; load average {os.getloadavg()[0]:.1f}; CPU seconds (user+sys) per stage")
    cpu = {}
    for name, fn in rows:
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu[name], w = time.process_time() - c0, time.perf_counter() - w0
        print(f"  {name:16} cpu {cpu[name]:6.2f} s  wall {w:6.2f} s")
    total = sum(cpu.values())
    bound = max(total / 2, cpu["md5"])  # two cores; md5 cannot be split
    print(f"  sum {total:.2f} s; on 2 idle cores at best max(sum/2, md5) = {bound:.2f} s: {total / bound:.2f}x serial")
    task = stream.FileTask("F1", "D", made.name, made.md5, made.sha256, made.enc_size)
    per_thread = _thread_timer(spread)
    for tpf in ("1", "2", "3"):
        (end := workdir / f"end{tpf}").mkdir()
        ctx = _context(workdir, end, ks, tpf, chunk_size=1 << 20)  # [func_conf] chunk_size's default
        per_thread.clear()
        c0, w0, m0 = time.process_time(), time.perf_counter(), time.thread_time()
        r = stream.process_file(task, ctx)
        c, w = time.process_time() - c0, time.perf_counter() - w0
        per_thread["caller"] = time.thread_time() - m0
        assert r.status == "available", r.error
        threads = "  ".join(f"{k} {v:.2f}" for k, v in per_thread.items())
        idle2 = max(max(per_thread.values()), c / 2)  # two idle cores: the busiest thread, or half the work
        print(f"  pipeline threads_per_file={tpf}: cpu {c:6.2f} s  wall {w:6.2f} s  per thread: {threads}")
        print(f"    on 2 idle cores at best {idle2:.2f} s (the busiest thread or cpu/2)")
        shutil.rmtree(end)


def _thread_timer(spread: Any) -> dict[str, float]:
    """Wrap spread's hasher and writer threads to record their own CPU seconds (time.thread_time)."""
    seconds: dict[str, float] = {}

    def timed(fn: Callable[[Any], None], name: str) -> Callable[[Any], None]:
        def run(self: Any) -> None:
            t0 = time.thread_time()
            fn(self)
            seconds[name] = time.thread_time() - t0

        return run

    spread._Stages._hash = timed(spread._Stages._hash, "hasher")
    spread._Stages._write = timed(spread._Stages._write, "writer")
    return seconds


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
    p.add_argument(
        "what", nargs="?", choices=("profile", "ab", "threads", "stages", "small", "huge"), default="profile"
    )
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--size", default="1GB", help="huge: the one file's size")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", default="1,auto", help="huge: threads_per_file settings to compare (default 1,auto)")
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
    with tempfile.TemporaryDirectory(prefix="legampi-huge-") as d:
        if a.what == "stages":
            stages(datagen.parse_size(a.size), Path(d))
            return 0
        return huge(datagen.parse_size(a.size), a.repeat, Path(d), a.db, tuple(a.threads.split(",")))


if __name__ == "__main__":
    sys.exit(main())
