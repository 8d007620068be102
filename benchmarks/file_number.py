#!/usr/bin/env python3
"""What numbering files at registration costs: `Database.register` of N new files into a current
database (file_number given by the database: SQLite's AFTER INSERT trigger, PostgreSQL's identity
column) against the same schema with the numbering removed (the baseline), on SQLite and PostgreSQL.

Both databases are registered into in the same process, alternating which goes first each round;
the result is the ratio of the median times (numbered / baseline). Only `register` is timed: the
entries are built before. `--smoke`: a few files, one round, to check that it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Run as a script: this folder is first on sys.path, so the siblings import.
from bookkeeping import PG_DSN, database
from ingest import machine_info

from legampi.config import DatabaseConfig
from legampi.db import Database

# What removes the numbering from a current database: the baseline schema.
UNNUMBER = {
    "sqlite": ["DROP TRIGGER file_number_given"],
    "postgresql": [
        "ALTER TABLE file ALTER COLUMN file_number DROP IDENTITY",
        "ALTER TABLE file ALTER COLUMN file_number DROP NOT NULL",
    ],
}


def entries(dataset: str, n: int) -> list[dict[str, Any]]:
    """N new manifest entries as `registration.prepare` leaves them."""
    return [
        {
            "file_id": f"{dataset}-F{i:07d}",
            "file_name": f"{dataset}/d{i % 97:02d}/f{i:07d}.bam.c4gh",
            "archive_name": f"{dataset}/d{i % 97:02d}/f{i:07d}.bam.c4gh",
            "md5": f"{i:032x}",
            "sha256": None,
            "size": 1000 + i,
            "transfer_checksum": None,
            "transfer_checksum_type": None,
            "line": i + 1,
        }
        for i in range(n)
    ]


@contextlib.contextmanager
def pair(kind: str, base: Path) -> Iterator[dict[str, Database]]:
    """Two fresh current databases of KIND, the baseline one without the numbering."""
    with database(kind, base / "numbered", PG_DSN) as a, database(kind, base / "baseline", PG_DSN) as b:
        dbs = {"numbered": Database.connect(DatabaseConfig(url=a)), "baseline": Database.connect(DatabaseConfig(url=b))}
        try:
            for db in dbs.values():
                db.init_schema()
            with dbs["baseline"].transaction():
                for stmt in UNNUMBER[kind]:
                    dbs["baseline"].execute(stmt)
            yield dbs
        finally:
            for db in dbs.values():
                db.close()


def run(kind: str, files: int, rounds: int, base: Path) -> dict[str, Any]:
    """Median seconds of registering FILES new files, per schema, over ROUNDS alternating rounds."""
    times: dict[str, list[float]] = {"numbered": [], "baseline": []}
    with pair(kind, base) as dbs:
        for r in range(rounds):
            order = ["numbered", "baseline"] if r % 2 == 0 else ["baseline", "numbered"]
            batch = entries(f"DS{r}", files)
            for name in order:
                t0 = time.perf_counter()
                dbs[name].register(f"DS{r}", batch, f"DS{r}.tab")
                times[name].append(time.perf_counter() - t0)
        numbers = [row["file_number"] for row in dbs["numbered"].files(columns=("file_number",))]
    problems = [] if sorted(numbers) == list(range(1, files * rounds + 1)) else ["file numbers not 1..N"]
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "db": kind,
        "files": files,
        "rounds": rounds,
        "numbered_s": round(med["numbered"], 4),
        "baseline_s": round(med["baseline"], 4),
        "ratio": round(med["numbered"] / med["baseline"], 3),
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=20_000, help="files registered per round (default 20000)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    p.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    p.add_argument("--smoke", action="store_true", help="20 files, one round: checks that it runs")
    p.add_argument("--json", type=Path, help="also write the rows and machine info here")
    a = p.parse_args(argv)
    files, rounds = (20, 1) if a.smoke else (a.files, a.rounds)
    kinds = ("sqlite", "postgresql") if a.db == "both" else (a.db,)
    with tempfile.TemporaryDirectory(prefix="legampi-file-number-") as tmp:
        rows = [run(k, files, rounds, Path(tmp) / k) for k in kinds]
    print(f"{'db':<11} {'files':>7} {'rounds':>6} {'numbered s':>11} {'baseline s':>11} {'ratio':>6}")
    for r in rows:
        cells = [f"{r['files']:>7}", f"{r['rounds']:>6}", f"{r['numbered_s']:>11}", f"{r['baseline_s']:>11}"]
        print(f"{r['db']:<11} {' '.join(cells)} {r['ratio']:>6}")
        for problem in r["problems"]:
            print(f"  PROBLEM: {problem}")
    if a.json:
        a.json.write_text(json.dumps({"machine": machine_info(), "rows": rows}, indent=2), encoding="utf-8")
    if a.smoke:
        print("smoke run: checks only, no measurement")
    return 1 if any(r["problems"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
