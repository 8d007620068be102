#!/usr/bin/env python3
"""Start-up benchmark: the fixed cost of one `mpiexec -n N legampi process` with nothing to do.

On a 2-second job this fixed cost is what separates legampi from the ideal script (interpreters, imports,
MPI_Init/MPI_Finalize, the start-up handshake, the database's job row, exit). The script times a job on an
empty workspace (recovery, planning, the job rows and the summary still run) again and again,
alternating environment variants in every round so that a drift in machine speed hits all of them alike,
and prints the median, quartile and minimum of each.

  python benchmarks/startup.py                                  # legampi's defaults, 21 rounds
  python benchmarks/startup.py --variant MPIR_CVAR_CH4_NETMOD=ucx --variant "MPIR_CVAR_ENABLE_HEAVY_YIELD=0"

A variant is a space-separated list of VAR=VALUE set for that run on top of the environment; the first
variant is always legampi's defaults (nothing added).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import datagen
from bookkeeping import print_table, workdir_for, write_json
from ingest import _tool, legampi_available, machine_info, write_legampi_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="startup.py",
        description=__doc__.split("\n")[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ranks", type=int, default=3, help="mpiexec -n (default 3)")
    p.add_argument("--rounds", type=int, default=21, help="runs of every variant (default 21)")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="'VAR=VALUE ...'",
        help="environment variant to compare with the defaults (repeatable)",
    )
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--note", default="")
    p.add_argument("--smoke", action="store_true", help="3 rounds, for CI")
    a = p.parse_args(argv)
    if a.smoke:
        a.rounds = 3
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    why = legampi_available()
    if why:
        print(f"startup: {why}", file=sys.stderr)
        return 2
    variants = [""] + a.variant
    envs = []
    for v in variants:
        env = dict(os.environ)
        for kv in v.split():
            key, sep, value = kv.partition("=")
            if not sep:
                print(f"error: variant item {kv!r} is not VAR=VALUE", file=sys.stderr)
                return 2
            env[key] = value
        envs.append(env)
    work = workdir_for(a.workdir, "legampi-startup-")
    exe, mpiexec = _tool("legampi"), _tool("mpiexec")
    walls: dict[str, list[float]] = {v: [] for v in variants}
    try:
        keys = datagen.make_keys(work / "keys")
        conf = work / "run-legampi.ini"
        write_legampi_config(conf, work / "run-ws", keys, "full", f"sqlite:///{work / 'run-legampi.db'}")
        subprocess.run([exe, "-c", str(conf), "init-db"], check=True, capture_output=True)
        cmd = [mpiexec, "-n", str(a.ranks), exe, "-c", str(conf), "process"]
        for _ in range(a.rounds):
            for v, env in zip(variants, envs, strict=True):
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
                wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    print(
                        f"FAILED {v or 'defaults'}: exit {proc.returncode}: {proc.stderr.strip()[-400:]}",
                        file=sys.stderr,
                    )
                    return 1
                walls[v].append(wall)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    rows = []
    for v in variants:
        w = sorted(walls[v])
        rows.append(
            [
                v or "(legampi defaults)",
                f"{1000 * statistics.median(w):.1f}",
                f"{1000 * w[len(w) // 4]:.1f}",
                f"{1000 * w[0]:.1f}",
            ]
        )
    print(f"\n== empty job, mpiexec -n {a.ranks}, {a.rounds} rounds (ms)")
    print_table(rows, ["variant", "median", "p25", "min"])
    result = {
        "benchmark": "startup",
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "note": a.note,
        "machine": machine_info(),
        "config": {"ranks": a.ranks, "rounds": a.rounds},
        "walls": walls,
    }
    write_json(a.json, "startup", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
