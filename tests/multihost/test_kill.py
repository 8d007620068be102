"""A worker killed on another host than rank 0's, then reruns started from a third host.

One scenario (module fixture `killed`, its own bed), several verdicts:
1. the job ends promptly with a non-zero status, nothing is lost or half-archived;
2. a rerun from another host right away, with the default claim_timeout (3600 s), reports the files
   it had to skip and why (issue 14; today it says "0 file(s) claimed" and nothing else);
3. a rerun from another host finishes every file. TODAY THIS WAITS: a host cannot see whether a job on
   another host is alive, so the dead job's claims go only when its heartbeat is older than
   claim_timeout, which the scenario sets to 1 s before this rerun and then waits out. Once jobs are
   recognised as dead from any host (issue 14's heartbeat-based release), drop the claim_timeout
   override and the wait (`LATER_RERUN_CLAIM_TIMEOUT`, `_wait_out_claims`).
4. the failure names the lost rank and its host (issue 14; today: rank 0's MPI error, or nothing).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from legampi import archive
from tests.conftest import PG_DSN, Workspace, make_workspace
from tests.faults.conftest import add_files, assert_safe, finish, poll, rows_by_name, set_options, temp_files
from tests.multihost import bed as bedlib
from tests.multihost.bed import Bed
from tests.multihost.conftest import forwarded_pg, netns_host, run_mpi, start_mpi

pytestmark = pytest.mark.multihost
MB = 1 << 20
LATER_RERUN_CLAIM_TIMEOUT = 1  # seconds; see the module docstring, point 3


class NotYetBuilt(Exception):
    """An expectation of issue 14 that legampi does not meet yet (the xfail tests raise only this, so a
    broken scenario still fails them for real)."""


@dataclass
class Killed:
    bed: Bed
    ws: Workspace
    entries: list[dict]
    victim_host: str
    rc: int
    seconds_to_end: float
    err: str
    first_rerun: subprocess.CompletedProcess[str]
    unfinished_after_first: set[str]
    second_rerun: subprocess.CompletedProcess[str]


def _wait_out_claims(ws: Workspace) -> None:
    """THE PART THAT WAITS FOR THE PROTOCOL CHANGE: a tiny claim_timeout, then let it pass."""
    set_options(ws, func_conf={"claim_timeout": LATER_RERUN_CLAIM_TIMEOUT})
    time.sleep(LATER_RERUN_CLAIM_TIMEOUT + 0.5)


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Killed]:
    problem = bedlib.why_not()
    if problem:
        pytest.skip(problem)
    import psycopg2

    schema = "mh_" + uuid.uuid4().hex[:12]
    conn = psycopg2.connect(PG_DSN, connect_timeout=5)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE SCHEMA "{schema}"')
    b = Bed.up(3)
    try:
        ws = make_workspace(tmp_path_factory.mktemp("killed"), f"{forwarded_pg(b)}?options=-csearch_path%3D{schema}")
        ws.legampi("init-db")
        yield _scenario(b, ws)
    finally:
        problems = b.down()
        conn.cursor().execute(f'DROP SCHEMA "{schema}" CASCADE')
        conn.close()
        assert not problems, f"bed teardown left: {problems}"


def _scenario(b: Bed, ws: Workspace) -> Killed:
    big = add_files(ws, "big", 1, 120 * MB, block=os.urandom(MB))
    small = add_files(ws, "small", 6, 200_000, dataset="DS2")
    # rank 0 on h1; worker 1 (given the largest file first) on h2, 2 on h3, 3 on h1
    job = start_mpi(b, ws, 4, "process", tag="killed")
    temp = poll(lambda: [t for t in temp_files(ws) if t.name.startswith(".big00")], "the big file's temp", 60)[0]
    pid = int(re.search(archive.TEMP_MARKER + r"(\d+)-", temp.name).group(1))  # type: ignore[union-attr]
    victim_host = netns_host(pid, b)
    assert victim_host == b.names[1], f"the big file is streamed on {victim_host}, expected {b.names[1]}"
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    rc, _out, err = finish(job, timeout=90)
    seconds = time.monotonic() - t0
    rows = rows_by_name(ws)
    assert rows[big[0]["name"]]["status"] != "available" and (ws.processing / big[0]["name"]).is_file()
    assert not archive.final_path(ws.end_storage, big[0]["name"], (".c4gh",)).exists(), "half-written file archived"

    # rank 0 of the reruns on h3: another host than the killed job's rank 0 (h1) and its victim (h2)
    first = run_mpi(b, ws, 3, "process", hosts=[3, 1], check=False)
    unfinished = {n for n, r in rows_by_name(ws).items() if r["status"] != "available"}
    _wait_out_claims(ws)
    second = run_mpi(b, ws, 3, "process", hosts=[3, 2], check=False)
    return Killed(b, ws, big + small, victim_host, rc, seconds, err, first, unfinished, second)


def test_job_ends_promptly_with_a_failure_status(killed: Killed) -> None:
    assert killed.rc != 0, f"mpiexec ended 0 after a worker on {killed.victim_host} was killed:\n{killed.err}"
    assert killed.seconds_to_end < 30, f"the job took {killed.seconds_to_end:.1f}s to end after the kill"


def test_rerun_from_another_host_finishes_every_file(killed: Killed) -> None:
    """Passes today only because _wait_out_claims shortens claim_timeout and waits (see the docstring)."""
    p = killed.second_rerun
    assert p.returncode == 0, p.stdout + p.stderr
    assert_safe(killed.ws, killed.entries, complete=True)
    # the dead job's files were taken over: released (claim of a dead job) or recorded (archived, no row)
    taken = set(re.findall(r"recover:   (?:released|recorded): (\S+)", p.stderr))
    assert taken == killed.unfinished_after_first, p.stderr


def test_first_rerun_reports_what_it_skipped_and_why(killed: Killed) -> None:
    p = killed.first_rerun
    assert p.returncode == 0, p.stdout + p.stderr
    assert killed.unfinished_after_first, "the first rerun finished everything: nothing to report"
    text = p.stdout + p.stderr
    missing = [name for name in killed.unfinished_after_first if name not in text]
    if missing:
        raise NotYetBuilt(f"the rerun does not name {missing}, which it left alone:\n{text}")


@pytest.mark.xfail(
    strict=False,
    raises=NotYetBuilt,
    reason="issue 14, a race with the launcher: rank 0 writes 'lost contact with rank N on host X' within "
    "microseconds of the death (its lifeline), but in about half the runs hydra's proxy on rank 0's host is "
    "torn down (mpiexec aborts as soon as the victim's proxy exits) before it forwards that line",
)
def test_failure_names_the_lost_rank_and_host(killed: Killed) -> None:
    if not re.search(rf"lost contact with rank 1 on (host )?{killed.victim_host}", killed.err):
        raise NotYetBuilt(f"no 'lost contact with rank 1 on {killed.victim_host}' in:\n{killed.err}")


def test_nothing_left_behind(killed: Killed) -> None:
    """No temp files, no leftover ranks of the killed job or the reruns."""
    assert not temp_files(killed.ws)
    leftovers = killed.bed.ps()
    assert "legampi" not in leftovers, leftovers
