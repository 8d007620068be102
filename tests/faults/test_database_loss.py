"""The tracking database is unreachable at start, goes away in the middle of a run, or is lost for good.

At start nothing may be touched. In the middle, the Recorder reconnects; whatever happens, no archived
file ends without its row after a rerun and no source is deleted without its row. Lost for good: the job
stops handing out work and exits 4 (recorder.LOST_DATABASE) deleting nothing, and the rerun once the
database is back records every file exactly once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from tests.conftest import MPIEXEC, PG_DSN, Workspace
from tests.faults.conftest import (
    PG_ONLY,
    add_files,
    all_files,
    archived_files,
    assert_safe,
    closed_port,
    events,
    finish,
    poll,
    rows_by_name,
    set_options,
    start_mpi,
    tcp_ports_of,
    tree_snapshot,
    wait_ranks,
)


@PG_ONLY
@pytest.mark.parametrize("ranks", [0, 3])
def test_database_unreachable_at_start(workspace, ranks: int) -> None:
    ws = workspace
    files = add_files(ws, "f", 3, 100_000)
    set_options(ws, database={"url": f"postgresql://postgres@127.0.0.1:{closed_port()}/test"})
    before = tree_snapshot(ws.processing)
    job = start_mpi(ws, ranks, "process", tag="nodb")
    rc, out, err = finish(job, timeout=90)
    assert rc != 0, f"{out}\n{err}"
    assert "cannot connect to PostgreSQL" in err and "127.0.0.1" in err, err
    assert tree_snapshot(ws.processing) == before, "processing changed although the job could not start"
    assert not list(all_files(ws.end_storage)), "end_storage written although the job could not start"
    set_options(ws, database={"url": ws.db_url})
    assert_safe(ws, files)


@PG_ONLY
def test_database_connection_killed_mid_run(workspace) -> None:
    ws = workspace
    set_options(ws, func_conf={"batch_size": 1, "flush_interval": 0})
    files = add_files(ws, "f", 14, 6 << 20, block=os.urandom(1 << 20))
    job = start_mpi(ws, 3, "process", tag="cut")
    ranks = wait_ranks(job, 3)

    def some_recorded() -> bool:
        st = [r["status"] for r in rows_by_name(ws).values()]
        return 1 <= st.count("available") <= len(files) - 4

    poll(some_recorded, "a few files recorded while most are still to do")
    ports = tcp_ports_of(ranks[0])
    conn = psycopg2.connect(PG_DSN, connect_timeout=5)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute(
        "SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s) AND pid <> pg_backend_pid()", (list(ports),)
    )
    backends = [r[0] for r in cur.fetchall()]
    assert backends, f"no PostgreSQL backend found for rank 0 (pid {ranks[0]}, ports {ports})"
    for b in backends:
        cur.execute("SELECT pg_terminate_backend(%s)", (b,))
    conn.close()
    rc, out, err = finish(job, timeout=120)
    assert "reconnecting" in err, f"rank 0 never noticed its connection was cut:\n{err}"
    for name, r in rows_by_name(ws).items():
        if r["status"] != "available":
            assert (ws.processing / name).is_file(), f"{name}: source deleted without its row"
    if rc != 0:
        ws.mpi(3, "process")
    assert_safe(ws, files, complete=True)


HERE = Path(__file__).resolve().parent
SECRET = "pw-Never-In-Output-42"  # the database password: must appear in no message
LOST = re.compile(
    r"legampi process: lost the tracking database: (.+); (\d+) archived file\(s\) not recorded, "
    r"nothing deleted; rerun `legampi process` once the database is back"
)


def _start(ws: Workspace, ranks: int, prefix: list[str], tag: str) -> subprocess.Popen[str]:
    """`[mpiexec -n RANKS] PREFIX -c CONFIG process` in the background, with a database password set."""
    logs = ws.root / "logs"
    logs.mkdir(exist_ok=True)
    out, err = open(logs / f"{tag}.out", "w"), open(logs / f"{tag}.err", "w")  # closed by finish()
    cmd = ([MPIEXEC, "-n", str(ranks)] if ranks else []) + [*prefix, "-c", str(ws.config), "process"]
    env = dict(os.environ, LEGAMPI_DB_PASSWORD=SECRET)
    p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ws.root, env=env)
    p._legampi_logs = (logs / f"{tag}.out", logs / f"{tag}.err", out, err)  # type: ignore[attr-defined]
    return p


def _lose_then_rerun(
    ws: Workspace, ranks: int, files: list[dict[str, Any]], job: subprocess.Popen[str], cut: Callable[[], None]
) -> None:
    """Cut the database once a few files are recorded; the job must end 4 having deleted nothing; the
    rerun (the database back) must record every file exactly once."""

    def some_recorded() -> bool:
        st = [r["status"] for r in rows_by_name(ws).values()]
        return 1 <= st.count("available") <= len(files) - 4

    poll(some_recorded, "a few files recorded while most are still to do", timeout=120)
    cut()
    rc, out, err = finish(job, timeout=300)
    assert rc == 4, f"exit {rc}, not 4 (lost database)\n{out}\n{err}"
    m = LOST.search(err)
    assert m, f"no lost-database message:\n{err}"
    assert "STOPPED: lost the tracking database" in out, out
    assert SECRET not in out + err, "the database password leaked into the output"
    rows = rows_by_name(ws)
    for name, r in rows.items():
        if r["status"] != "available":
            assert (ws.processing / name).is_file(), f"{name}: source deleted without its row"
    available = sum(r["status"] == "available" for r in rows.values())
    assert len(archived_files(ws)) - available == int(m.group(2)) >= 1, (m.group(0), available)
    again = ws.mpi(3, "process") if ranks else ws.legampi("process")
    assert again.returncode == 0, again.stdout + again.stderr
    assert_safe(ws, files, complete=True)
    counts = Counter(e["file_id"] for e in events(ws, "available"))
    assert sorted(counts.values()) == [1] * len(files), f"not recorded exactly once: {counts}"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("ranks", [0, 3])
def test_sqlite_lost_for_good_mid_run(workspace, ranks: int) -> None:
    ws = workspace
    set_options(ws, func_conf={"batch_size": 1, "flush_interval": 0})
    files = add_files(ws, "f", 10, 4 << 20, block=os.urandom(1 << 20))
    marker = ws.root / "database-gone"
    job = _start(ws, ranks, [sys.executable, str(HERE / "db_gone.py"), str(marker)], f"sqlite-gone-{ranks}")
    _lose_then_rerun(ws, ranks, files, job, cut=marker.touch)


@PG_ONLY
@pytest.mark.parametrize("ranks", [0, 3])
def test_postgresql_lost_for_good_mid_run(workspace, ranks: int) -> None:
    """The shared server stays up: rank 0 reaches it through a TCP forward, which the test kills."""
    ws = workspace
    target = urlsplit(PG_DSN)
    fwd = subprocess.Popen(
        [sys.executable, str(HERE.parent / "multihost" / "tcpforward.py"), "127.0.0.1", "0"]
        + [target.hostname or "127.0.0.1", str(target.port or 5432)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fwd.stdout is not None
        port = int(fwd.stdout.readline())
        url = urlsplit(ws.db_url)
        via = urlunsplit(url._replace(netloc=f"{url.username}@127.0.0.1:{port}"))
        set_options(ws, database={"url": via}, func_conf={"batch_size": 1, "flush_interval": 0})
        files = add_files(ws, "f", 10, 4 << 20, block=os.urandom(1 << 20))
        job = _start(ws, ranks, [str(Path(sys.executable).parent / "legampi")], f"pg-gone-{ranks}")

        def cut() -> None:
            fwd.kill()
            fwd.wait()
            set_options(ws, database={"url": ws.db_url})  # the rerun reaches the server directly

        _lose_then_rerun(ws, ranks, files, job, cut)
    finally:
        if fwd.poll() is None:
            fwd.kill()
            fwd.wait()
