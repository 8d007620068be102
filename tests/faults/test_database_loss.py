"""The tracking database is unreachable at start, or goes away in the middle of a run.

At start nothing may be touched. In the middle, the Recorder reconnects; whatever happens, no archived
file ends without its row after a rerun and no source is deleted without its row.
"""

from __future__ import annotations

import os

import psycopg2
import pytest

from tests.conftest import PG_DSN
from tests.faults.conftest import (
    PG_ONLY,
    add_files,
    all_files,
    assert_safe,
    closed_port,
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
