"""Overlapping `legampi process` jobs on the same folders and database: each file archived once.

Two jobs start together and each claims part of the files (--limit), so both sets of workers stream at
the same time; a third starts while they are writing temp files, so its recovery step runs beside live
jobs (it must leave their temp files and claims alone) and it takes what is left. Jobs claim in
batches as their workers need them (issue 14): two jobs started together on one backlog each archive a
share, and a job started while another is frozen mid-run takes what that one has not claimed.
"""

from __future__ import annotations

import collections
import os
import re
import signal
from typing import Any

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


def _job_files(ws: Any, out: str) -> tuple[str, set[str]]:
    """The job id a `process` summary names, and the files its job recorded available."""
    m = re.search(r"^job (\S+): (\d+) file\(s\)", out, re.M)
    assert m, out
    return m.group(1), {e["file_id"] for e in events(ws, "available") if e["job_id"] == m.group(1)}


def _each_once(ws: Any, files: list[dict[str, Any]]) -> None:
    """Every file claimed, archived and recorded exactly once, nothing released or failed."""
    want = {e["name"]: 1 for e in files}
    assert collections.Counter(e["file_id"] for e in events(ws, "available")) == want
    assert collections.Counter(e["file_id"] for e in events(ws, "claimed")) == want, "a file claimed twice"
    assert not events(ws, "released") and not events(ws, "failed")
    assert_safe(ws, files, complete=True)  # one archived copy per file, recorded, sources removed


def test_two_jobs_started_together_share_the_backlog(workspace) -> None:
    """Issue 14: neither job claims everything at its start; each archives a part, none twice."""
    ws = workspace
    files = add_files(ws, "t", 24, 6 << 20, block=os.urandom(1 << 20))
    jobs = [start_mpi(ws, 2, "process", tag=f"together{i}") for i in (1, 2)]
    results = [finish(j, timeout=300) for j in jobs]
    for rc, out, err in results:
        assert rc == 0, f"exit {rc}\n{out}\n{err}"
    took = dict(_job_files(ws, out) for _rc, out, _err in results)
    assert len(took) == 2 and all(took.values()), f"a job took nothing: {took}"
    a, b = took.values()
    assert not a & b and a | b == {e["name"] for e in files}
    _each_once(ws, files)


def test_a_job_started_mid_run_takes_what_is_not_claimed(workspace) -> None:
    """A job frozen mid-run holds only its batches: a second job started then archives the rest of the
    backlog while the first is stopped, and the first then finishes only what it had claimed."""
    ws = workspace
    files = add_files(ws, "m", 16, 4 << 20, block=os.urandom(1 << 20))
    first = start_mpi(ws, 2, "process", tag="first")
    ranks = wait_ranks(first, 2)
    poll(lambda: temp_files(ws), "the first job to write a temp file")
    freeze(ranks.values())
    try:
        held = {e["file_id"] for e in events(ws, "claimed")}
        assert len(held) < len(files), f"the first job claimed every file at once: {held}"
        rc, out, err = finish(start_mpi(ws, 2, "process", tag="second"), timeout=300)
        assert rc == 0, f"exit {rc}\n{out}\n{err}"
        _second, took = _job_files(ws, out)
        assert took == {e["name"] for e in files} - held, "the second job took more or less than the unclaimed"
    finally:
        for pid in ranks.values():
            os.kill(pid, signal.SIGCONT)
    rc, out, err = finish(first, timeout=300)
    assert rc == 0, f"exit {rc}\n{out}\n{err}"
    assert _job_files(ws, out)[1] == held
    _each_once(ws, files)
