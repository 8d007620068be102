"""The chaos test's world: a workspace on one backend, waves of Crypt4GH files, and what can be observed.

Everything the harness waits for is observable state (a file in end_storage, a row, a count of
file_event rows), read here without touching what legampi writes: a read connection to the tracking
database (SQLite in WAL mode never blocks a writer) and directory listings.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legampi import archive
from legampi.config import DatabaseConfig
from legampi.db import Database
from tests.conftest import PG_DSN, Workspace, make_workspace

EXTS = (".c4gh", ".cip", ".gpg")
MB = 1 << 20


@contextlib.contextmanager
def backend_workspace(backend: str, keep: bool = False) -> Iterator[Workspace]:
    """A fresh workspace (folders, keys, config, initialised schema) on BACKEND; removed afterwards
    (folder and PostgreSQL schema) unless KEEP."""
    tmp = Path(tempfile.mkdtemp(prefix=f"legampi-chaos-{backend}-"))
    schema = None
    try:
        if backend == "sqlite":
            url = f"sqlite:///{tmp / 'tracking.db'}"
        else:
            import psycopg2

            schema = "chaos_" + uuid.uuid4().hex[:12]
            conn = psycopg2.connect(PG_DSN, connect_timeout=5)
            conn.autocommit = True
            conn.cursor().execute(f'CREATE SCHEMA "{schema}"')
            conn.close()
            url = f"{PG_DSN}?options=-csearch_path%3D{schema}"
        ws = make_workspace(tmp, url)
        ws.legampi("init-db")
        yield ws
    finally:
        if schema is not None and not keep:
            _drop_schema(schema)
        if keep:
            print(f"kept workspace {tmp}" + (f" and PostgreSQL schema {schema}" if schema else ""), flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=False)


def _drop_schema(schema: str) -> None:
    import psycopg2

    conn = psycopg2.connect(PG_DSN, connect_timeout=5)
    conn.autocommit = True
    try:
        cur = conn.cursor()
        cur.execute("SET lock_timeout = '30s'")
        cur.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        conn.close()


@dataclass
class Wave:
    dataset: str
    entries: list[dict[str, Any]]  # name, md5, sha256, size (encrypted bytes)

    @property
    def bytes(self) -> int:
        return sum(int(e["size"]) for e in self.entries)


def make_wave(ws: Workspace, number: int, rng: random.Random, large_mb: tuple[int, int]) -> Wave:
    """Small files (0 B to ~500 kB) and a few of LARGE_MB MiB (so kills land mid-stream), written to
    receiving, registered from a tab manifest with md5, size and sha256. Sizes come from RNG."""
    ds = f"CHAOS{number:03d}"
    sizes = [int(10 ** rng.uniform(0, 5.7)) for _ in range(rng.randint(6, 12))]
    sizes += [rng.randint(large_mb[0] * MB, large_mb[1] * MB) for _ in range(rng.randint(2, 4))]
    if number == 0:
        sizes[0] = 0  # an empty file once
    entries = []
    for i, size in enumerate(sizes):
        kind = "big" if size >= MB else "s"
        rel = f"w{number:03d}/{'sub/' if i % 3 == 2 else ''}{kind}{i:02d}.bam.c4gh"
        e = ws.add_file(rel, size, where="receiving", data=os.urandom(size))
        e.pop("plain")
        entries.append(e)
    ws.legampi("register", str(ws.manifest(ds, entries, sha256=True)), "--dataset", ds)
    return Wave(ds, entries)


def monitor_until_moved(ws: Workspace, wave: Wave, timeout: float = 120) -> int:
    """Run `legampi monitor` passes until every file of WAVE has moved to processing; returns passes."""
    deadline = time.monotonic() + timeout
    passes = 0
    while any((ws.receiving / e["name"]).exists() for e in wave.entries):
        if time.monotonic() > deadline:
            raise RuntimeError(f"monitor did not move {wave.dataset} to processing within {timeout}s")
        ws.legampi("monitor")
        passes += 1
    return passes


def walk(root: Path) -> list[Path]:
    return [Path(d) / n for d, _dirs, names in os.walk(root) for n in names]


def temp_owner(p: Path) -> int | None:
    """The pid a legampi temp name carries (the process writing it)."""
    rest = p.name.rsplit(archive.TEMP_MARKER, 1)
    if len(rest) != 2:
        return None
    pid = rest[1].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


class Observer:
    """Read-only views of the database and the folders, cheap enough to poll every few ms."""

    def __init__(self, ws: Workspace, archive_to_name: dict[str, str]):
        self.ws = ws
        self.archive_to_name = archive_to_name  # end_storage relative path -> registered name
        self.db = Database.connect(DatabaseConfig(url=ws.db_url))

    def close(self) -> None:
        self.db.close()

    def events(self) -> Counter:
        rows = self.db.query("SELECT event, count(*) AS n FROM file_event GROUP BY event")
        return Counter({r["event"]: int(r["n"]) for r in rows})

    def job_ids(self) -> set[str]:
        return {r["job_id"] for r in self.db.query("SELECT job_id FROM job")}

    def claims(self) -> Counter:
        """claimed_by -> number of rows in `processing` it holds."""
        q = "SELECT claimed_by, count(*) AS n FROM file WHERE status = 'processing' GROUP BY claimed_by"
        return Counter({r["claimed_by"]: int(r["n"]) for r in self.db.query(q)})

    def status(self) -> dict[str, str]:
        return {r["file_name"]: r["status"] for r in self.db.query("SELECT file_name, status FROM file")}

    def remaining(self) -> tuple[int, int]:
        """(files, bytes) a job can still take: pending, received, or claimed by a job of the job table
        (a dead one's claims are released by the next run; an orphan claim is not, see orphan_claims)."""
        rows = self.db.query(
            "SELECT count(*) AS n, coalesce(sum(size), 0) AS b FROM file WHERE status IN ('pending', 'received') "
            "OR (status = 'processing' AND claimed_by IN (SELECT job_id FROM job))"
        )
        return int(rows[0]["n"]), int(rows[0]["b"])

    def orphan_claims(self) -> dict[str, str]:
        """name -> claimant of rows claimed by an id that is no job: no run releases them before
        claim_timeout (a standalone `recover` killed between its claim and its record leaves these)."""
        rows = self.db.query(
            "SELECT file_name, claimed_by FROM file WHERE status = 'processing' "
            "AND (claimed_by IS NULL OR claimed_by NOT IN (SELECT job_id FROM job))"
        )
        return {r["file_name"]: r["claimed_by"] for r in rows}

    def temps(self) -> list[Path]:
        """Temp data files (not sidecar temps) in end_storage."""
        return [p for p in walk(self.ws.end_storage) if archive.is_temp_name(p.name) and ".c4gh.sha256" not in p.name]

    def archived_unrecorded(self) -> list[str]:
        """Registered names whose final archived file exists while their row is not `available` yet."""
        names = []
        for p in walk(self.ws.end_storage):
            if p.name.endswith(".c4gh") and not archive.is_temp_name(p.name):
                name = self.archive_to_name.get(p.relative_to(self.ws.end_storage).as_posix())
                if name is not None:
                    names.append(name)
        if not names:
            return []
        st = self.status()
        return [n for n in names if st.get(n) != "available"]

    def snapshot(self) -> tuple[Any, ...]:
        """Everything recovery can change: both folders' listings, the event log's size, the statuses."""
        return (
            frozenset(walk(self.ws.end_storage)),
            frozenset(walk(self.ws.processing)),
            sum(self.events().values()),
            tuple(sorted(self.status().items())),
        )

    def debris(self) -> list[str]:
        """What a crash leaves for recovery: temps, claimed rows, sources of available files,
        archived copies without their row."""
        st, orphans = self.status(), self.orphan_claims()
        out = [f"temp {p.name}" for p in walk(self.ws.end_storage) if archive.is_temp_name(p.name)]
        out += [f"claimed {n}" for n, s in st.items() if s == "processing" and n not in orphans]
        out += [f"source of {n}" for n, s in st.items() if s == "available" and (self.ws.processing / n).exists()]
        out += [f"unrecorded {n}" for n in self.archived_unrecorded() if st.get(n) != "processing" and n not in orphans]
        return out


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as exc:
        return f"(cannot read {path}: {exc})"


def has_traceback(path: Path) -> bool:
    try:
        return "Traceback (most recent call last)" in path.read_text(errors="replace")
    except OSError:
        return False
