"""Issue 17: three array tasks (`process --branches 3 --branch 1|2|3`, concurrent processes) racing
`legampi monitor`, with transfers arriving in receiving and files registered while the tasks run.

Shares go by the design card's formula, file number = branch + branches*n, where the file number is
the file's registration number (file_number, given by the database; `workspace.share_of`), so a file
registered between two tasks' plans moves no other file: every file ready before a round is archived
in that round by exactly one task (its own share's), and a second round (the periodic array again)
archives the rest; none lost, none twice.
"""

from __future__ import annotations

import collections
import os
import re
from typing import Any

from legampi.workspace import share_of
from tests.faults.conftest import add_files, assert_safe, events, finish, poll, register, rows_by_name, start_mpi

BRANCHES = 3


def _round(ws: Any, tag: str, between: Any = None) -> dict[str, int]:
    """Run the three tasks at once (BETWEEN: monitor passes and registrations while they run); the
    branch of each task's job id."""
    tasks = {b: start_mpi(ws, 0, "process", "--branches", "3", "--branch", str(b), tag=f"{tag}-{b}") for b in (1, 2, 3)}
    while between is not None and any(p.poll() is None for p in tasks.values()):
        between()
    branch_of = {}
    for b, p in tasks.items():
        rc, out, err = finish(p, timeout=300)
        assert rc == 0, f"task {b}: exit {rc}\n{out}\n{err}"
        m = re.search(r"^job (\S+): \d+ file\(s\)", out, re.M)
        assert m, out
        branch_of[m.group(1)] = b
    return branch_of


def _archived_by(ws: Any, branch_of: dict[str, int]) -> dict[str, int]:
    """file id -> the branch of the task that archived it (files of this round's jobs)."""
    return {e["file_id"]: branch_of[e["job_id"]] for e in events(ws, "available") if e["job_id"] in branch_of}


def _numbers(ws: Any) -> dict[str, int]:
    """file id -> file_number (registration number)."""
    return {r["file_id"]: r["file_number"] for r in rows_by_name(ws).values()}


def test_array_tasks_racing_the_monitor_archive_each_file_once(workspace) -> None:
    ws = workspace
    block = os.urandom(1 << 20)
    ready = add_files(ws, "r", 12, 3 << 20, block=block)  # registered, in processing (pending)
    moved = [ws.add_file(f"in/m{i:02d}.bam.c4gh", 1 << 20, where="receiving") for i in range(4)]
    register(ws, "DS2", moved)
    for _pass in range(3):  # track, count, move (pass_limit 2): in processing, `received`, before the round
        ws.legampi("monitor")
    arriving = [ws.add_file(f"in/a{i:02d}.bam.c4gh", 1 << 20, where="receiving") for i in range(4)]
    register(ws, "DS3", arriving)  # registered; the monitor moves them while the round runs
    late = [ws.add_file(f"in/l{i:02d}.bam.c4gh", 1 << 20, where="receiving") for i in range(4)]
    before = {e["name"] for e in ready + moved}
    assert {n for n, r in rows_by_name(ws).items() if r["status"] in ("pending", "received")} >= before
    todo = ["register"]

    def between() -> None:  # while the tasks run: register the late files once, and monitor passes
        if todo and events(ws, "claimed"):
            register(ws, "DS4", late)
            todo.clear()
        ws.legampi("monitor")

    first = _round(ws, "round1", between)
    done = _archived_by(ws, first)
    assert before <= set(done), f"ready before the round but not archived in it: {before - set(done)}"
    numbers = _numbers(ws)
    assert all(share_of(numbers[f], BRANCHES) == b for f, b in done.items()), "a file archived outside its share"
    assert collections.Counter(e["file_id"] for e in events(ws, "available")).most_common(1)[0][1] == 1

    if todo:  # the tasks ended before any claim was seen (cannot happen: they claim the ready files)
        register(ws, "DS4", late)
    everything = ready + moved + arriving + late
    poll(lambda: ws.legampi("monitor") and not any(ws.receiving.rglob("*.c4gh")), "the monitor to move all")
    second = _round(ws, "round2")
    again = _archived_by(ws, second)
    assert not set(again) & set(done), "a file archived in both rounds"
    later = _numbers(ws)
    assert {f: later[f] for f in numbers} == numbers, "a file's number changed"
    assert sorted(later.values()) == list(range(1, len(everything) + 1))  # 1..N, none twice
    assert all(share_of(later[f], BRANCHES) == b for f, b in again.items())
    assert collections.Counter(e["file_id"] for e in events(ws, "available")) == {e["name"]: 1 for e in everything}
    assert not events(ws, "failed")
    assert_safe(ws, everything, complete=True)
