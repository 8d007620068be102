#!/usr/bin/env python3
"""Ingestion throughput benchmark: legampi against the seed method, a shell pipeline and an ideal script.

One invocation generates its own encrypted data, runs every contender on the SAME files with
the same worker count and page-cache state, verifies every contender's archive (so a broken
contender cannot look fast), and prints a table, ratios and a load-balance analysis; the JSON
written next to it records the machine, the library versions and every number.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script (python benchmarks/ingest.py): its folder is first on sys.path, so the siblings import.
import baselines
import datagen
import memcage
from baselines import ContenderRun, FileOutcome
from datagen import DataFile, KeySet, human

HERE = Path(__file__).resolve().parent
CONTENDERS = ("seed", "cli", "ideal", "legampi")
MODES = ("full", "header")
SMOKE_SPEC = ("uniform:64KiB,1MiB", 6)
SIM_SCENARIOS = (  # (label, spec, files, trials): bytes as work units, no data written
    ("lognormal mean 20MB sigma 1.5, 20 files", "lognormal:20MB,1.5", 20, 50),
    ("lognormal mean 20MB sigma 1.5, 200 files", "lognormal:20MB,1.5", 200, 50),
    ("per-sample 50 x (1 x 8GB + 3 x 50MB)", "per-sample:8GB,50MB", 50, 1),
)

EPILOG = """\
size specs (--sizes):
  SIZE | fixed:SIZE          every file the same size, e.g. 100MB (same as --size 100MB)
  uniform:MIN,MAX            uniform sizes, e.g. uniform:64KiB,1MiB (many small files)
  lognormal:MEAN,SIGMA       lognormal mix with arithmetic mean MEAN, e.g. lognormal:20MB,1.5
  per-sample:LARGE,SMALL     --files counts samples; each has one LARGE (.bam) and three SMALL
                             files (.bam.bai, .vcf.gz, .vcf.gz.tbi) that sort together
  units: B, KB, MB, GB (decimal), KiB, MiB, GiB (binary). --total rescales to that sum.

examples:
  python benchmarks/ingest.py --smoke                       # seconds; non-zero exit if any check fails
  python benchmarks/ingest.py --files 6 --size 50MB         # medium run
  python benchmarks/ingest.py --files 200 --size 256KiB     # many small files
  python benchmarks/ingest.py --files 40 --sizes lognormal:20MB,1.5 --total 1GB
  python benchmarks/ingest.py --files 10 --sizes per-sample:40MB,1MB
  python benchmarks/ingest.py --balance-only                # scheduling simulation only, instant

contenders (all on the same files, W workers, fresh output folders, verified afterwards):
  seed     the seed's sequence with the same ciphers: decrypt to a plaintext file, read it for md5,
           encrypt to a file, read that for md5, move into the archive; W processes, static
           round-robin split (file branch + branches*n of the sorted listing); no fsync (as the seed)
  cli      per file: crypt4gh decrypt --sk INBOX < in | tee (md5sum) (sha256sum) |
           crypt4gh encrypt --recipient_pk ARCHIVE > out; sha256sum out; W files at a time
  ideal    W plain processes doing only the unavoidable work with the crypt4gh calls: one pass
           read, decrypt, md5+sha256 of the plaintext, encrypt for the archive key (mode full) or
           re-encrypt the header and copy the payload while decrypting it to hash (mode header),
           sha256 of the output, write, fsync once; largest file first
  legampi  mpiexec -n W+1 legampi -c CONF process (config and database written per run); on by
           default when `import legampi` and `legampi --help` work, else "skipped"

measurement: wall time (median of --repeat rounds; each round runs every contender once, in an order
rotated from round to round) of the processing step only (data generation,
legampi init-db/register and verification excluded); MB = 10^6 bytes of plaintext. Before each
contender: sync, then warm the page cache by reading every input once (default) or drop it
(--drop-caches, needs root).
Ratios are throughput ratios (e.g. legampi/seed = seed wall / legampi wall; > 1: legampi faster),
the median of the per-round ratios, so a drift in machine speed between rounds cancels out.

verification: every file must have an output; reported plaintext md5/sha256 must match the
manifest; --verify N files per contender (largest, smallest, random) are decrypted in memory with
the archive secret key and their md5/sha256/size compared with the manifest, and the contender's
archive checksum recomputed. A failure marks the contender verify-failed (exit status 1).

balance: static round-robin vs dynamic listing-order vs dynamic largest-first (LPT) makespans
against the lower bound max(total/W, largest), simulated with bytes as work units for a
lognormal sigma=1.5 mix and the per-sample pattern, then for the generated files (bytes, and the
ideal contender's measured per-file seconds) and for real (ideal full run with the static split).

exit status: 0 all contenders verified (skipped ones excepted), 1 a contender failed or its output
failed verification, 2 bad arguments or setup error.
"""


# --------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="ingest.py",
        description=__doc__.split("\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--files", type=int, default=6, help="number of files (samples for per-sample); default 6")
    g.add_argument("--sizes", default=None, metavar="SPEC", help="size spec, see below; default 50MB")
    g.add_argument("--size", default=None, metavar="SIZE", help="shorthand for --sizes fixed:SIZE")
    g.add_argument("--total", default=None, metavar="SIZE", help="rescale the planned sizes to this total")
    g.add_argument("--seed", type=int, default=1, help="random seed for the size plan (default 1)")
    g.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="folder for keys, inputs and outputs (default: a new temporary folder)",
    )
    g.add_argument("--keep", action="store_true", help="keep the work folder and every contender's outputs")
    r = p.add_argument_group("run")
    r.add_argument("--workers", "-W", type=int, default=2, help="worker processes per contender (default 2)")
    r.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma list out of {','.join(CONTENDERS)} (default all)",
    )
    r.add_argument(
        "--modes",
        default=",".join(MODES),
        help="re-encryption modes for ideal and legampi: "
        "full (new session key, payload re-encrypted) and/or header (header only); default both",
    )
    r.add_argument(
        "--legampi",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run legampi (default: only if `import legampi` and the legampi command work)",
    )
    r.add_argument(
        "--legampi-db",
        default="sqlite",
        metavar="sqlite|URL",
        help="legampi database: a fresh SQLite file per run (default) or a URL of a throwaway "
        "database, e.g. postgresql://127.0.0.1:5432/test",
    )
    r.add_argument(
        "--drop-caches",
        action="store_true",
        help="drop the page cache before each contender (root) instead of warming it",
    )
    r.add_argument(
        "--memory-limit",
        type=datagen.parse_size,
        default=None,
        metavar="SIZE",
        help="run each contender in a memory cgroup of SIZE (e.g. 400MB; root): its page cache cannot hold "
        "what it writes, as on a node whose data is many times its RAM (see memcage.py)",
    )
    r.add_argument(
        "--verify",
        default="3",
        metavar="N|all",
        help="files per contender to decrypt and check in full (default 3)",
    )
    r.add_argument("--repeat", type=int, default=1, help="runs per contender; the table shows the median (default 1)")
    r.add_argument(
        "--warmup",
        type=int,
        default=1,
        metavar="N",
        help="untimed rounds of every contender first (default 1; 0 with --smoke): on a VM the first pass "
        "over fresh page-cache memory is slow for whoever comes first",
    )
    r.add_argument(
        "--smoke",
        action="store_true",
        help=f"tiny run ({SMOKE_SPEC[1]} files, {SMOKE_SPEC[0]}) of every contender in seconds",
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "--json",
        type=Path,
        default=None,
        help="JSON results path (default benchmarks/results/<timestamp>.json)",
    )
    o.add_argument("--note", default="", help="free text stored in the JSON (e.g. 'machine shared')")
    b = p.add_argument_group("balance")
    b.add_argument("--balance-only", action="store_true", help="print only the scheduling simulation (fast)")
    b.add_argument("--balance-workers", default="2,4,8,16", help="W values for the simulation (default 2,4,8,16)")
    b.add_argument(
        "--no-balance-real",
        action="store_true",
        help="skip the extra real run of the ideal contender with the static split",
    )
    args = p.parse_args(argv)

    if args.size and args.sizes:
        p.error("give --size or --sizes, not both")
    if args.smoke:
        if args.size or args.sizes:
            p.error("--smoke chooses its own sizes; drop --size/--sizes")
        args.sizes, args.files = SMOKE_SPEC
        args.warmup = 0
    args.sizes = f"fixed:{args.size}" if args.size else (args.sizes or "fixed:50MB")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be 0 or more")
    args.contenders = _parse_list(p, args.contenders, CONTENDERS, "--contenders")
    args.modes = _parse_list(p, args.modes, MODES, "--modes")
    if args.legampi is False and "legampi" in args.contenders:
        args.contenders.remove("legampi")
    try:
        args.balance_workers = [int(w) for w in args.balance_workers.split(",") if w.strip()]
        args.total = datagen.parse_size(args.total) if args.total else None
        args.plan = datagen.plan_sizes(args.sizes, args.files, args.seed, args.total)
    except ValueError as exc:
        p.error(str(exc))
    if not args.balance_workers or min(args.balance_workers) < 1:
        p.error("--balance-workers needs positive integers")
    if args.verify != "all" and not (args.verify.isdigit() and int(args.verify) >= 0):
        p.error(f"--verify must be a non-negative number or 'all', got {args.verify!r}")
    return args


def _parse_list(p: argparse.ArgumentParser, text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        p.error(f"{flag}: unknown {bad or 'empty list'}; choose from {','.join(allowed)}")
    return items


# --------------------------------------------------------------------------- machine


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """Cores, CPU model, memory, load, Python and library versions: what the numbers depend on."""
    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    mpiexec = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    hydra = None
    if mpiexec:
        out = subprocess.run([mpiexec, "--version"], check=False, capture_output=True, text=True).stdout
        hydra = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Version:" in ln), None)
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "mem_total_bytes": mem,
        "kernel": platform.release(),
        "loadavg_start": os.getloadavg(),
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("crypt4gh", "mpi4py", "mpich", "cryptography", "numpy", "legampi")},
        "mpiexec": mpiexec,
        "hydra_version": hydra,
    }


# --------------------------------------------------------------------------- page cache


def prepare_cache(files: list[DataFile], drop: bool) -> None:
    """Give every contender the same page-cache state: inputs warm, or everything dropped."""
    os.sync()
    if drop:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return
    buf = bytearray(1 << 20)
    for d in files:
        with open(d.path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def check_drop_caches() -> str | None:
    """Why --drop-caches cannot work here, or None if it can."""
    if os.geteuid() != 0:
        return "--drop-caches needs root"
    if not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        return "--drop-caches: /proc/sys/vm/drop_caches is not writable (container?)"
    return None


# --------------------------------------------------------------------------- legampi
# ============================================================================================
# LEGAMPI HOOK. Written against the planned CLI:
#   legampi -c CONF init-db
#   legampi -c CONF register MANIFEST --dataset ID
#   mpiexec -n W+1 legampi -c CONF process     (processes registered files found in `processing`)
# Only the `process` step is timed. Any failure becomes the run's error in the table.
# ============================================================================================


def legampi_available() -> str | None:
    """None if legampi can run, else the reason it is skipped.

    Also byte-compiles the legampi package, as `pip install` does for a regular install: an editable
    install on a machine with PYTHONDONTWRITEBYTECODE set (this one) would otherwise compile its modules
    in every rank of every run (~55 ms of CPU per rank), which no deployed job pays."""
    spec = importlib.util.find_spec("legampi")
    if spec is None or not spec.submodule_search_locations:
        return "skipped: legampi not available (import legampi fails)"
    import compileall

    compileall.compile_dir(spec.submodule_search_locations[0], quiet=1)
    exe = _tool("legampi")
    if not exe:
        return "skipped: legampi not available (no legampi command)"
    proc = subprocess.run([exe, "--help"], check=False, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"skipped: legampi not available (`legampi --help` exit {proc.returncode}: {last})"
    return None


def _tool(name: str) -> str | None:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


FUNC_CONF_EXTRA: dict[str, str] = {}  # more [func_conf] keys (smallfiles.py huge: threads_per_file 1 vs auto)


def write_legampi_config(path: Path, base: Path, keys: KeySet, mode: str, db_url: str) -> dict[str, Path]:
    """Write the INI legampi reads; returns the workspace folders (created, empty)."""
    spaces = {w: base / w for w in ("receiving", "processing", "end_storage", "metadata")}
    for folder in spaces.values():
        folder.mkdir(parents=True, exist_ok=True)
    cfg = configparser.ConfigParser()
    cfg["database"] = {"url": db_url}
    cfg["workspaces"] = {w: str(f) for w, f in spaces.items()}
    cfg["crypto"] = {
        "inbox_secret_key": keys.inbox_sk,
        "archive_public_key": keys.archive_pk,
        "reencrypt": mode,
        "archive_checksum": "sha256",
    }
    cfg["func_conf"] = {"extensions": ".c4gh,.cip,.gpg", **FUNC_CONF_EXTRA}
    with open(path, "w", encoding="utf-8") as f:
        cfg.write(f)
    return spaces


def _find_output(end_storage: Path, name: str) -> Path | None:
    """legampi's archived file for inbox file ``name`` (it may keep, add or normalise the .c4gh suffix)."""
    stem = name.removesuffix(".c4gh")
    for cand in (name, stem + ".c4gh", name + ".c4gh"):
        hits = [p for p in end_storage.rglob(cand) if p.is_file()]
        if hits:
            return hits[0]
    return None


def run_legampi(workdir: Path, files: list[DataFile], workers: int, mode: str, db: str) -> ContenderRun:
    """Run legampi on the benchmark files: config, init-db, register (untimed), then the timed process step.

    Uses the work folder layout this harness creates (``keys/``, ``manifest.tsv``); inputs are
    hard-linked into a fresh ``processing`` workspace so the originals stay for other contenders.
    """
    run = ContenderRun("legampi", mode, "mpi", workers)
    keys = _keys_of(workdir)
    base = workdir / f"legampi-{mode}"
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    db_url = f"sqlite:///{base / 'legampi.db'}" if db == "sqlite" else db
    conf = base / "legampi.ini"
    spaces = write_legampi_config(conf, base, keys, mode, db_url)
    for d in files:
        _link_or_copy(Path(d.path), spaces["processing"] / d.name)
    exe, mpiexec = _tool("legampi"), _tool("mpiexec")
    if not exe or not mpiexec:
        run.status, run.error = "error", f"command not found: {'legampi' if not exe else 'mpiexec'}"
        return run
    steps = [
        ("init-db", [exe, "-c", str(conf), "init-db"]),
        (
            "register",
            [
                exe,
                "-c",
                str(conf),
                "register",
                str(workdir / "manifest.tsv"),
                "--dataset",
                f"EGAD-BENCH-{mode.upper()}",
            ],
        ),
    ]
    timings = {}
    for label, cmd in steps:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        timings[label] = round(time.perf_counter() - t0, 3)
        if proc.returncode != 0:
            run.status, run.error = "error", f"{label} exit {proc.returncode}: {_tail(proc)}"
            return run
    cmd = [mpiexec, "-n", str(workers + 1), exe, "-c", str(conf), "process"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    run.wall = time.perf_counter() - t0
    (base / "process.log").write_text(proc.stdout + proc.stderr)
    with open(workdir / "legampi-process.log", "a", encoding="utf-8") as every:  # all runs, for slow outliers
        every.write(f"=== {dt.datetime.now().isoformat(timespec='seconds')} {mode} {run.wall:.2f} s\n")
        every.write(proc.stdout + proc.stderr)
    run.notes = f"untimed: init-db {timings['init-db']} s, register {timings['register']} s; log {base}/process.log"
    if proc.returncode != 0:
        run.status, run.error = "error", f"process exit {proc.returncode}: {_tail(proc)}"
        return run
    for d in files:
        out = _find_output(spaces["end_storage"], d.name)
        run.outcomes.append(
            FileOutcome(
                name=d.name,
                output=str(out) if out else None,
                error=None if out else f"no archived file for {d.name} in {spaces['end_storage']}",
            )
        )
    return run


def _tail(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr or proc.stdout or "no output").strip().splitlines()
    return " | ".join(lines[-3:])[-500:]


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _keys_of(workdir: Path) -> KeySet:
    k = workdir / "keys"
    return KeySet(str(k / "inbox.sec"), str(k / "inbox.pub"), str(k / "archive.sec"), str(k / "archive.pub"))


# --------------------------------------------------------------------------- verification


def verify(run: ContenderRun, files: list[DataFile], keys: KeySet, spot: str, rng: random.Random) -> list[str]:
    """Problems with a contender's archive (empty list: verified). Checks outputs, not claims."""
    problems: list[str] = []
    by_name = {o.name: o for o in run.outcomes}
    for d in files:
        o = by_name.get(d.name)
        if o is None:
            problems.append(f"{d.name}: no outcome")
        elif o.error:
            problems.append(f"{d.name}: {o.error}")
        elif not o.output or not os.path.isfile(o.output):
            problems.append(f"{d.name}: archived file {o.output} missing")
        else:
            if o.md5 is not None and o.md5 != d.md5:
                problems.append(f"{d.name}: reported plaintext md5 {o.md5} != manifest {d.md5}")
            if o.sha256 is not None and o.sha256 != d.sha256:
                problems.append(f"{d.name}: reported plaintext sha256 {o.sha256} != manifest {d.sha256}")
            problems += datagen.check_layout(o.output, d.size)
    if problems:
        return problems
    if spot == "all":
        chosen = list(files)
    else:
        n = int(spot)
        ordered = sorted(files, key=lambda d: d.size)
        chosen = ([ordered[-1], ordered[0]] + rng.sample(ordered[1:-1], max(0, min(n - 2, len(ordered) - 2))))[:n]
    sk = keys.archive_secret()
    for d in {d.name: d for d in chosen}.values():
        out = by_name[d.name].output
        try:
            md5, sha, size = datagen.decrypt_digest(out, sk)
        except ValueError as exc:
            problems.append(f"{d.name}: {exc}")
            continue
        if (md5, sha, size) != (d.md5, d.sha256, d.size):
            problems.append(f"{d.name}: archive decrypts to md5 {md5} size {size}, manifest says {d.md5} {d.size}")
        o = by_name[d.name]
        for algo, claimed in (("sha256", o.out_sha256), ("md5", o.out_md5), ("sha256", _sidecar(out))):
            if claimed and _file_digest(out, algo) != claimed:
                problems.append(f"{d.name}: archive {algo} {claimed} does not match the archived bytes")
    return problems


def _sidecar(path: str) -> str | None:
    """The checksum in PATH's `sha256sum -c` sidecar; `#` lines (legampi's provenance line) are comments,
    as coreutils reads them."""
    side = Path(path + ".sha256")
    if not side.is_file():
        return None
    lines = [line for line in side.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return lines[0].split()[0] if lines else None


def _file_digest(path: str, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- balance


def schedule_ratios(sizes_listing: list[float], w: int) -> dict[str, float]:
    """Makespans over the lower bound for the three schedules (1.0 = perfect)."""
    lb = baselines.lower_bound(sizes_listing, w)
    if lb <= 0:
        return {"static": 1.0, "listing": 1.0, "lpt": 1.0}
    return {
        "static": baselines.static_makespan(sizes_listing, w) / lb,
        "listing": baselines.greedy_makespan(sizes_listing, w) / lb,
        "lpt": baselines.lpt_makespan(sizes_listing, w) / lb,
    }


def simulate_balance(workers_list: list[int], seed: int) -> list[dict]:
    """Pure simulation, bytes as work units: mean and worst makespan/lower-bound over trials."""
    rows = []
    for label, spec, files, trials in SIM_SCENARIOS:
        for w in workers_list:
            acc: dict[str, list[float]] = {"static": [], "listing": [], "lpt": []}
            for t in range(trials):
                plan = sorted(datagen.plan_sizes(spec, files, seed + t))
                for k, v in schedule_ratios([s for _, s in plan], w).items():
                    acc[k].append(v)
            rows.append(
                {
                    "scenario": label,
                    "workers": w,
                    "trials": trials,
                    **{f"{k}_mean": sum(v) / len(v) for k, v in acc.items()},
                    **{f"{k}_max": max(v) for k, v in acc.items()},
                }
            )
    return rows


def print_simulation(rows: list[dict]) -> None:
    print("\n== balance: simulation (makespan / lower bound max(total/W, largest); 1.00 = perfect)")
    print(f"{'scenario':42} {'W':>3} {'static':>14} {'listing':>14} {'LPT':>14}")
    for r in rows:
        cells = [
            f"{r[k + '_mean']:.2f} (max {r[k + '_max']:.2f})" if r["trials"] > 1 else f"{r[k + '_mean']:.2f}"
            for k in ("static", "listing", "lpt")
        ]
        print(f"{r['scenario']:42} {r['workers']:>3} {cells[0]:>14} {cells[1]:>14} {cells[2]:>14}")
    print(
        "static = seed round-robin (file branch+branches*n of the sorted listing); listing = dynamic in "
        "listing order (xargs -P); LPT = dynamic largest first"
    )


# --------------------------------------------------------------------------- report


def fmt_row(run: ContenderRun, nbytes: int) -> str:
    mbps = f"{nbytes / 1e6 / run.wall:9.1f}" if run.status == "ok" and run.wall > 0 else f"{'-':>9}"
    wall = f"{run.wall:8.2f}" if run.wall > 0 else f"{'-':>8}"
    status = run.status if run.status == "ok" else f"{run.status}: {run.error}"
    status = status if len(status) <= 200 else status[:197] + "..."  # full text in the JSON
    return (
        f"{run.contender:8} {run.mode:6} {run.schedule:8} {len(run.outcomes) or '-':>5} {human(nbytes):>9} "
        f"{wall} {mbps}  {status}"
    )


def ratios(runs: list[ContenderRun]) -> dict[str, str | float]:
    """Throughput ratios (the other's wall over this one's), n/a with the reason when a side is missing."""
    ok = {(r.contender, r.mode, r.schedule): r for r in runs if r.status == "ok"}
    get = {
        ("seed", "full"): ok.get(("seed", "full", "static")),
        ("cli", "full"): ok.get(("cli", "full", "listing")),
        ("ideal", "full"): ok.get(("ideal", "full", "lpt")),
        ("ideal", "header"): ok.get(("ideal", "header", "lpt")),
        ("legampi", "full"): ok.get(("legampi", "full", "mpi")),
        ("legampi", "header"): ok.get(("legampi", "header", "mpi")),
    }

    def ratio(a: tuple[str, str], b: tuple[str, str]) -> str | float:
        ra, rb = get[a], get[b]
        if ra is None or rb is None:
            return f"n/a ({'/'.join(a) if ra is None else '/'.join(b)} missing or failed)"
        if len(ra.walls) == len(rb.walls) > 1:  # same rounds: the median of the per-round ratios
            return round(statistics.median([wb / wa for wa, wb in zip(ra.walls, rb.walls, strict=True)]), 3)
        return round(rb.wall / ra.wall, 3)

    return {
        "legampi/seed (full)": ratio(("legampi", "full"), ("seed", "full")),
        "legampi/seed (header)": ratio(("legampi", "header"), ("seed", "full")),
        "legampi/cli (full)": ratio(("legampi", "full"), ("cli", "full")),
        "legampi/cli (header)": ratio(("legampi", "header"), ("cli", "full")),
        "legampi/ideal (full)": ratio(("legampi", "full"), ("ideal", "full")),
        "legampi/ideal (header)": ratio(("legampi", "header"), ("ideal", "header")),
        "ideal/seed (full)": ratio(("ideal", "full"), ("seed", "full")),
        "ideal/cli (full)": ratio(("ideal", "full"), ("cli", "full")),
        "header/full (ideal)": ratio(("ideal", "header"), ("ideal", "full")),
        "header/full (legampi)": ratio(("legampi", "header"), ("legampi", "full")),
    }


def real_balance(files: list[DataFile], runs: list[ContenderRun], w: int, static_run: ContenderRun | None) -> dict:
    """Balance on the generated files: simulated in bytes and in measured seconds, and measured for real."""
    listing = sorted(files, key=lambda d: d.name)
    out: dict = {"workers": w, "bytes": schedule_ratios([d.size for d in listing], w)}
    lpt = next(
        (r for r in runs if (r.contender, r.mode, r.schedule, r.status) == ("ideal", "full", "lpt", "ok")),
        None,
    )
    if lpt:
        secs = {o.name: o.seconds for o in lpt.outcomes}
        out["seconds"] = schedule_ratios([secs[d.name] for d in listing], w)
        out["ideal_full_lpt_wall"] = round(lpt.wall, 3)
    if static_run is not None:
        out["ideal_full_static_wall"] = round(static_run.wall, 3) if static_run.status == "ok" else static_run.error
        if lpt and static_run.status == "ok":
            out["measured_static_over_lpt"] = round(static_run.wall / lpt.wall, 3)
    return out


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now()
    result: dict = {
        "started": started.isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "note": args.note,
        "machine": machine_info(),
    }
    sim = simulate_balance(args.balance_workers, args.seed)
    result["balance_simulation"] = sim
    if args.balance_only:
        print_simulation(sim)
        if args.json:
            _write_json(args.json, result)
        return 0
    if args.drop_caches and (why := check_drop_caches()):
        print(f"error: {why}", file=sys.stderr)
        return 2
    if args.memory_limit and (why := memcage.why_unavailable()):
        print(f"error: {why}", file=sys.stderr)
        return 2
    skip_legampi = None
    if "legampi" in args.contenders:
        skip_legampi = legampi_available()
        if skip_legampi and args.legampi:
            print(f"error: --legampi given but {skip_legampi.removeprefix('skipped: ')}", file=sys.stderr)
            return 2

    workdir = args.workdir.resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="legampi-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()) and not (workdir / "manifest.tsv").exists():
        print(f"error: --workdir {workdir} is not empty and not a previous benchmark folder", file=sys.stderr)
        return 2
    for old in ("inbox", "out", "scratch") + tuple(f"legampi-{m}" for m in MODES):
        if (workdir / old).exists():
            shutil.rmtree(workdir / old)
    print(f"work folder: {workdir}{' (kept)' if args.keep else ''}")
    try:
        code = _run(args, workdir, result, sim, skip_legampi)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=False)
    if args.smoke:
        code = max(code, run_extra_smokes())
    return code


EXTRA_SMOKES = ("bookkeeping.py", "memory.py", "rank0.py", "startup.py")


def run_extra_smokes() -> int:
    """--smoke also runs the bookkeeping, memory and rank-0 benchmarks in their own smoke modes."""
    why = legampi_available()
    if why:
        print(f"\n==== {', '.join(EXTRA_SMOKES)} --smoke {why}")
        return 0
    failed = []
    for script in EXTRA_SMOKES:
        print(f"\n==== {script} --smoke", flush=True)
        proc = subprocess.run([sys.executable, str(HERE / script), "--smoke"], check=False)
        if proc.returncode != 0:
            print(f"FAILED {script} --smoke: exit {proc.returncode}", file=sys.stderr)
            failed.append(script)
    ran = ", ".join(("ingest.py", *EXTRA_SMOKES))
    verdict = f"checks FAILED in {', '.join(failed)}" if failed else "every check passed"
    print(f"\n==== smoke run: {ran} ran; {verdict}. Targets are judged on full runs (docs/benchmarks.md).")
    return 1 if failed else 0


def _run(args: argparse.Namespace, workdir: Path, result: dict, sim: list[dict], skip_legampi: str | None) -> int:
    keys = datagen.make_keys(workdir / "keys")
    t0 = time.perf_counter()
    files = datagen.generate(workdir / "inbox", args.plan, keys, workers=args.workers)
    datagen.write_manifest(workdir / "manifest.tsv", files)
    total = sum(d.size for d in files)
    print(
        f"data: {len(files)} files, {human(total)} plaintext ({args.sizes}, seed {args.seed}), "
        f"generated in {time.perf_counter() - t0:.1f} s; W={args.workers}; "
        f"cache {'dropped' if args.drop_caches else 'warm'} before each contender"
        + (f"; each contender in a memory cgroup of {human(args.memory_limit)}" if args.memory_limit else "")
    )
    result["data"] = {
        "spec": args.sizes,
        "files": len(files),
        "bytes": total,
        "seed": args.seed,
        "sizes": [d.size for d in files],
    }
    result["config"] = {
        "workers": args.workers,
        "modes": args.modes,
        "contenders": args.contenders,
        "cache": "dropped" if args.drop_caches else "warm",
        "memory_limit": args.memory_limit,
        "verify": args.verify,
        "warmup": args.warmup,
    }

    plan: list[tuple[str, str]] = []
    for c in args.contenders:
        modes = args.modes if c in ("ideal", "legampi") else ["full"]
        plan += [(c, m) for m in modes]
    rng = random.Random(args.seed)
    runs = _rounds(args, workdir, files, keys, plan, skip_legampi, rng, total)

    static_run = None
    if "ideal" in args.contenders and "full" in args.modes and not args.no_balance_real:
        static_run = _repeated(args, workdir, files, keys, "ideal", "full", "static", rng)
        runs.append(static_run)

    print(f"\n== results (W={args.workers}, {len(files)} files, {human(total)}; MB/s = plaintext MB / wall s)")
    print(f"{'contender':8} {'mode':6} {'schedule':8} {'files':>5} {'bytes':>9} {'wall s':>8} {'MB/s':>9}  status")
    for r in runs:
        print(fmt_row(r, total))
    rat = ratios(runs)
    print("\n== ratios (throughput; > 1 means the first is faster)")
    for k, v in rat.items():
        print(f"{k:26} {v if isinstance(v, str) else f'{v:.2f}x'}")

    print_simulation(sim)
    bal = real_balance(files, runs, args.workers, static_run)
    print(f"\n== balance: generated files, W={args.workers} (makespan / lower bound)")
    for unit in ("bytes", "seconds"):
        if unit in bal:
            b = bal[unit]
            print(f"simulated in {unit:7}: static {b['static']:.2f}  listing {b['listing']:.2f}  LPT {b['lpt']:.2f}")
    if "measured_static_over_lpt" in bal:
        print(
            f"measured (ideal full): static {bal['ideal_full_static_wall']:.2f} s vs LPT "
            f"{bal['ideal_full_lpt_wall']:.2f} s -> static/LPT {bal['measured_static_over_lpt']:.2f}"
        )

    result["results"] = [
        dict(
            r.to_dict(),
            bytes=total,
            mb_per_s=round(total / 1e6 / r.wall, 2) if r.status == "ok" and r.wall > 0 else None,
        )
        for r in runs
    ]
    result["ratios"] = rat
    result["balance_real"] = bal
    result["machine"]["loadavg_end"] = os.getloadavg()
    path = args.json or HERE / "results" / f"{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    _write_json(path, result)
    failed = [r for r in runs if r.status in ("error", "verify-failed")]
    for r in failed:
        print(f"FAILED {r.contender}/{r.mode}/{r.schedule}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


def _rounds(
    args: argparse.Namespace,
    workdir: Path,
    files: list[DataFile],
    keys: KeySet,
    plan: list[tuple[str, str]],
    skip_legampi: str | None,
    rng: random.Random,
    total: int,
) -> list[ContenderRun]:
    """--warmup untimed rounds, then --repeat rounds, each running every contender once, the order rotated
    from round to round.

    Interleaving matters on a shared VM: its speed drifts by up to 1.5x over tens of seconds, so
    contenders measured in separate blocks can land in different speed states. Each ContenderRun keeps
    its walls in round order, which lets `ratios` pair them round by round."""
    runs: dict[tuple[str, str], ContenderRun] = {}
    walls: dict[tuple[str, str], list[float]] = {k: [] for k in plan}
    for k in plan:
        if k[0] == "legampi" and skip_legampi:
            runs[k] = ContenderRun(
                "legampi", k[1], "mpi", args.workers, status="skipped", error=skip_legampi.removeprefix("skipped: ")
            )
    for i in range(-args.warmup, args.repeat):
        turn = i % len(plan)
        for k in plan[turn:] + plan[:turn]:
            if k in runs and runs[k].status != "ok":
                continue  # skipped, or failed in an earlier round: reported once, not retried
            run = _one_contender(args, workdir, files, keys, k[0], k[1], "lpt", rng)
            runs[k] = run
            if run.status == "ok" and i >= 0:
                walls[k].append(run.wall)
            label = f"round {i + 1}/{args.repeat}" if i >= 0 else "warm-up (untimed)"
            print(f"{label}: {fmt_row(run, total)}", flush=True)
    for k, run in runs.items():
        if run.status == "ok":
            run.walls, run.wall = walls[k], statistics.median(walls[k])
    return [runs[k] for k in plan]


def _repeated(
    args: argparse.Namespace,
    workdir: Path,
    files: list[DataFile],
    keys: KeySet,
    contender: str,
    mode: str,
    schedule: str,
    rng: random.Random,
) -> ContenderRun:
    """Run a contender --repeat times (each verified, fresh outputs); report the median wall time."""
    walls: list[float] = []
    for _ in range(args.repeat):
        run = _one_contender(args, workdir, files, keys, contender, mode, schedule, rng)
        if run.status != "ok":
            return run
        walls.append(run.wall)
    run.walls, run.wall = walls, statistics.median(walls)
    return run


def _one_contender(
    args: argparse.Namespace,
    workdir: Path,
    files: list[DataFile],
    keys: KeySet,
    contender: str,
    mode: str,
    schedule: str,
    rng: random.Random,
) -> ContenderRun:
    out = workdir / "out" / f"{contender}-{mode}-{schedule}"
    scratch = workdir / "scratch" / f"{contender}-{mode}-{schedule}"
    for d in (out, scratch):
        if d.exists():
            shutil.rmtree(d)
    prepare_cache(files, args.drop_caches)
    cage = memcage.MemoryCage(args.memory_limit) if args.memory_limit else contextlib.nullcontext()
    try:
        with cage:
            if contender == "seed":
                run = baselines.seed_method(files, out, scratch, keys, args.workers)
            elif contender == "cli":
                run = baselines.cli_pipeline(files, out, scratch, keys, args.workers)
            elif contender == "ideal":
                run = baselines.ideal(files, out, keys, args.workers, mode, schedule)
            else:
                run = run_legampi(workdir, files, args.workers, mode, args.legampi_db)
    except Exception as exc:  # noqa: BLE001 - a broken contender is reported in the table, not hidden
        run = ContenderRun(
            contender, mode, schedule, args.workers, status="error", error=f"{type(exc).__name__}: {exc}"
        )
    if isinstance(cage, memcage.MemoryCage) and cage.peak is not None:
        run.notes = f"{run.notes}; memory cgroup peak {human(cage.peak)} of {human(cage.limit)}".lstrip("; ")
    if run.status == "ok":
        problems = verify(run, files, keys, args.verify, rng)
        if problems:
            run.status = "verify-failed"
            run.error = f"{len(problems)} problem(s): " + "; ".join(problems[:3])
    if not args.keep:
        for d in (out, scratch, workdir / f"legampi-{mode}"):
            if d.exists():
                shutil.rmtree(d)
    return run


def _write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, default=str)
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    sys.exit(main())
