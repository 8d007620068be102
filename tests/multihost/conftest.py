"""Fixtures of the multi-host tests: a bed of three namespace "hosts" per test, a workspace on it (SQLite
file on the shared filesystem, or PostgreSQL through the bed's forward), jobs launched across the hosts.

Select with ``-m multihost``. Needs root and iproute2/util-linux; the Slurm test also needs Slurm and a
running munged (`.ci/run` starts it with tests/slurm/slurm-up.sh).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.conftest import LEGAMPI, MPIEXEC, PG_DSN, Workspace, make_workspace
from tests.multihost import bed as bedlib
from tests.multihost.bed import Bed

if TYPE_CHECKING:
    from tests.multihost.slurm import MultiSlurm


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "multihost: runs ranks on several network-namespace hosts (needs root)")


@pytest.fixture
def bed() -> Iterator[Bed]:
    """Three hosts on a bridge, removed at the end (and any bed of a crashed earlier run first)."""
    problem = bedlib.why_not()
    if problem:
        pytest.skip(problem)
    b = Bed.up(3)
    try:
        yield b
    finally:
        problems = b.down()
        assert not problems, f"bed {b.index} teardown left: {problems}"


def forwarded_pg(b: Bed, dsn: str = PG_DSN) -> str:
    """DSN with its host:port replaced by a forward on the bed's gateway (reachable from every host)."""
    parts = urlsplit(dsn)
    port = b.forward(parts.hostname or "127.0.0.1", parts.port or 5432, name="pg-forward")
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}{b.gateway}:{port}"))


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh schema on the test PostgreSQL (made through the root namespace's loopback)."""
    import psycopg2

    name = "mh_" + uuid.uuid4().hex[:12]
    conn = psycopg2.connect(PG_DSN, connect_timeout=5)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE SCHEMA "{name}"')
    try:
        yield name
    finally:
        conn.cursor().execute(f'DROP SCHEMA "{name}" CASCADE')
        conn.close()


def db_url_for(backend: str, b: Bed, tmp_path: Path, schema: str) -> str:
    """The URL every host uses: a SQLite file in the shared workspace, or PostgreSQL via the forward."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'ws' / 'tracking.db'}"
    return f"{forwarded_pg(b)}?options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def mh_workspace(request: pytest.FixtureRequest, bed: Bed, tmp_path: Path) -> Workspace:
    """A workspace whose config every host of the bed can use, schema initialised, on each backend."""
    schema = request.getfixturevalue("pg_schema") if request.param == "postgresql" else ""
    ws = make_workspace(tmp_path, db_url_for(request.param, bed, tmp_path, schema))
    ws.legampi("init-db")
    return ws


def mpi_cmd(b: Bed, ws: Workspace, n: int, args: Sequence[str], hosts: Sequence[str | int] | None = None) -> list[str]:
    """mpiexec -n N legampi -c CONFIG ARGS with rank r on HOSTS[r % len(HOSTS)] (default: every host)."""
    return [MPIEXEC, *b.mpiexec_args(hosts), "-n", str(n), LEGAMPI, "-c", str(ws.config), *args]


def run_mpi(
    b: Bed,
    ws: Workspace,
    n: int,
    *args: str,
    hosts: Sequence[str | int] | None = None,
    timeout: float = 60,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a job across the bed's hosts (mpiexec itself in the root namespace) and wait for it."""
    cmd = mpi_cmd(b, ws, n, args, hosts)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ws.root, check=False)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def start_mpi(
    b: Bed, ws: Workspace, n: int, *args: str, hosts: Sequence[str | int] | None = None, tag: str = "job"
) -> subprocess.Popen[str]:
    """Start a job across the bed in the background; tests/faults/conftest.finish() waits for it."""
    logs = ws.root / "logs"
    logs.mkdir(exist_ok=True)
    out = open(logs / f"{tag}.out", "w")  # closed by finish()
    err = open(logs / f"{tag}.err", "w")
    p = subprocess.Popen(mpi_cmd(b, ws, n, args, hosts), stdout=out, stderr=err, text=True, cwd=ws.root)
    p._legampi_logs = (logs / f"{tag}.out", logs / f"{tag}.err", out, err)  # type: ignore[attr-defined]
    return p


def netns_host(pid: int, b: Bed) -> str | None:
    """The bed host a process runs on (by its network namespace), or None (root namespace / gone)."""
    try:
        inode = int(os.readlink(f"/proc/{pid}/ns/net")[5:-1])
    except (OSError, ValueError):
        return None
    for h in b.hosts:
        if bedlib.netns_inode(h.name) == inode:
            return h.name
    return None


def elapsed(t0: float) -> float:
    return time.monotonic() - t0


@pytest.fixture
def mh_slurm(bed: Bed) -> MultiSlurm:
    """A Slurm cluster with one slurmd per bed host; stopped with the bed."""
    from tests.multihost.slurm import MultiSlurm, why_not

    problem = why_not()
    if problem:
        pytest.skip(problem)
    return MultiSlurm.up(bed)
