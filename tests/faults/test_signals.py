"""SIGTERM / SIGUSR1 during `legampi process` (Slurm's warning before the walltime, or an operator).

Hydra's mpiexec forwards both signals to every rank, so signalling mpiexec, rank 0, or a single worker
must all end the same way: files in flight finish and are recorded, claims of files not yet started are
released (status back to `received`; claims come in batches, so files never claimed stay `pending`),
the summary says the job stopped early, exit 0, and a rerun finishes the rest. To know exactly which
files were in flight, every rank is frozen (SIGSTOP) while the signal is sent and until it is pending
on the ranks it is meant for.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from legampi import archive
from tests.faults.conftest import (
    add_files,
    archived_files,
    assert_safe,
    events,
    finish,
    freeze,
    open_sources,
    poll,
    rows_by_name,
    start_mpi,
    temp_files,
    wait_ranks,
)


def _pending(pid: int, sig: int) -> bool:
    bit = 1 << (sig - 1)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("SigPnd:", "ShdPnd:")) and int(line.split()[1], 16) & bit:
            return True
    return False


# Every target on SQLite; PostgreSQL through mpiexec only (the database plays no part in the others).
@pytest.mark.parametrize(
    ("db_url", "target", "signame"),
    [
        ("sqlite", "mpiexec", "SIGTERM"),
        ("sqlite", "mpiexec", "SIGUSR1"),
        ("postgresql", "mpiexec", "SIGTERM"),
        ("postgresql", "mpiexec", "SIGUSR1"),
        ("sqlite", "rank0", "SIGTERM"),
        ("sqlite", "rank0", "SIGUSR1"),
        ("sqlite", "worker", "SIGTERM"),
    ],
    indirect=["db_url"],
)
def test_stop_signal_finishes_in_flight_and_releases_the_rest(workspace, target: str, signame: str) -> None:
    ws = workspace
    sig = getattr(signal, signame)
    files = add_files(ws, "f", 12, 10 << 20, block=os.urandom(1 << 20))
    job = start_mpi(ws, 3, "process", tag="signalled")
    ranks = wait_ranks(job, 3)
    poll(
        lambda: len({t.name.split("-tmp-")[1].split("-")[0] for t in temp_files(ws)}) == 2,
        "both workers to be in the middle of a file",
    )
    freeze(ranks.values())  # every thread really stopped: a signal sent earlier could still come first
    try:
        # Started before the signal: the worker has the source open or writes its temp file; or it is
        # archived already and only the result is still on its way to rank 0.
        by_rank = {
            r: open_sources(ranks[r], ws.processing)
            | {archive.final_name_of_temp(t.name) for t in temp_files(ws) if f"-tmp-{ranks[r]}-" in t.name}
            for r in (1, 2)
        }
        in_flight = by_rank[1] | by_rank[2]
        unreported = {p.name for p in archived_files(ws)}
        frozen = {n: r["status"] for n, r in rows_by_name(ws).items()}, [t.name for t in temp_files(ws)], ranks
        receivers = {"mpiexec": list(ranks.values()), "rank0": [ranks[0]], "worker": [ranks[1]]}[target]
        os.kill(job.pid if target == "mpiexec" else receivers[0], sig)
        poll(lambda: all(_pending(pid, sig) for pid in receivers), f"{signame} to reach {target}")
    finally:
        for pid in ranks.values():
            os.kill(pid, signal.SIGCONT)
    rc, out, err = finish(job)
    assert rc == 0, f"exit {rc} after {signame}:\n{out}\n{err}"
    assert "stopped early" in out, out
    assert in_flight, "nothing was in flight when the signal came"

    rows = rows_by_name(ws)
    available = {n for n, r in rows.items() if r["status"] == "available"}
    assert in_flight <= available, f"files in flight {in_flight} did not all finish: {available}"
    done_by = {
        r: {e["file_id"] for e in events(ws, "available") if e["details"].endswith(f" rank {r}")} for r in (1, 2)
    }
    assert done_by[1] | done_by[2] == available
    for r in (1, 2):  # a worker that got the signal itself starts nothing new
        if ranks[r] in receivers:
            extra = done_by[r] - by_rank[r] - unreported
            assert not extra, (
                f"rank {r} started files after {signame}: {extra} (in flight {by_rank}, archived "
                f"{unreported}, at freeze {frozen})\n{err}"
            )
    rest = [r for n, r in rows.items() if n not in available]
    assert rest, "every file was done: the signal came too late to test releasing"
    # claims come in batches: the rest were claimed and released (`received`) or never claimed (`pending`)
    claimed = {e["file_id"] for e in events(ws, "claimed")}
    for r in rest:
        assert r["status"] == ("received" if r["file_id"] in claimed else "pending") and r["claimed_by"] is None, r
    released = {e["file_id"] for e in events(ws, "released")}
    given_back = [r for r in rest if r["file_id"] in claimed]
    assert {r["file_id"] for r in given_back} == released
    assert not given_back or f"{len(given_back)} claimed file(s) not started were released" in out, out
    assert_safe(ws, files)

    rerun = ws.mpi(3, "process")
    assert f"{len(rest)} available" in rerun.stdout, rerun.stdout
    assert_safe(ws, files, complete=True)
