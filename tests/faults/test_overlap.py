"""Overlapping `legampi process` jobs on the same folders and database: each file archived once.

Two jobs start together and each claims part of the files (--limit), so both sets of workers stream at
the same time; a third starts while they are writing temp files, so its recovery step runs beside live
jobs (it must leave their temp files and claims alone) and it takes what is left.
"""

from __future__ import annotations

import collections
import os
import signal

from tests.faults.conftest import (
    PG_ONLY,
    add_files,
    archived_files,
    assert_safe,
    events,
    finish,
    freeze,
    poll,
    rows_by_name,
    set_options,
    start_mpi,
    temp_files,
    wait_ranks,
)


@PG_ONLY
def test_overlapping_jobs_archive_each_file_once(workspace) -> None:
    ws = workspace
    block = os.urandom(1 << 20)
    files = add_files(ws, "a", 16, 6 << 20, block=block) + add_files(ws, "b", 8, 3 << 20, "DS2", block=block)
    jobs = [start_mpi(ws, 3, "process", "--limit", "10", tag=f"job{i}") for i in (1, 2)]
    poll(lambda: temp_files(ws), "the first jobs to write temp files")
    jobs.append(start_mpi(ws, 3, "process", tag="job3"))
    results = [finish(j) for j in jobs]
    for rc, out, err in results:
        assert rc == 0, f"exit {rc}\n{out}\n{err}"
        assert "conflict" not in err and "FAILED" not in out and " ERROR " not in err, err
    assert_safe(ws, files, complete=True)
    done = collections.Counter(e["file_id"] for e in events(ws, "available"))
    assert done == {e["name"]: 1 for e in files}, f"files recorded available more or less than once: {done}"
    assert not events(ws, "failed")
    claimed = [int(out.split(" file(s)")[0].rsplit(" ", 1)[1]) for _rc, out, _err in results]
    assert max(claimed[:2]) <= 10 and sum(claimed) == len(files), [out for _rc, out, _err in results]


def test_recover_beside_a_live_job_leaves_it_alone(workspace) -> None:
    """`legampi recover` while a job is frozen mid-file with results it has not recorded yet."""
    ws = workspace
    set_options(ws, func_conf={"batch_size": 10000, "flush_interval": 3600})
    files = add_files(ws, "f", 8, 8 << 20, block=os.urandom(1 << 20))
    job = start_mpi(ws, 3, "process", tag="live")
    ranks = wait_ranks(job, 3)
    for _attempt in range(20):
        poll(
            lambda: temp_files(ws) and any(p.with_name(p.name + ".sha256").exists() for p in archived_files(ws)),
            "an archived file and a temp file of the live job",
        )
        freeze(ranks.values())
        temps = set(temp_files(ws))
        if temps:  # the temp file seen by poll may have been finished just before the stop: try again
            break
        for pid in ranks.values():
            os.kill(pid, signal.SIGCONT)
    try:
        archived = set(archived_files(ws))
        rows = rows_by_name(ws)
        assert temps and archived
        rec = ws.legampi("recover")
        assert "released 0 stale claim(s)" in rec.stdout and "recorded 0 archived" in rec.stdout, rec.stdout
        assert "removed 0 temporary file(s)" in rec.stdout, rec.stdout
        assert temps <= set(temp_files(ws)) | archived, "recover removed a live job's temp file"
        assert rows_by_name(ws) == rows, "recover changed rows a live job holds"
    finally:
        for pid in ranks.values():
            os.kill(pid, signal.SIGCONT)
    rc, out, err = finish(job)
    assert rc == 0, f"{out}\n{err}"
    assert f"{len(files)} available" in out, out
    assert_safe(ws, files, complete=True)
