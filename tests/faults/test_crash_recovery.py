"""SIGKILL in the middle of a job: a worker mid-file, or rank 0 holding results it has not written yet.

Either way the database stays the checkpoint: the rerun removes the dead job's temp files, records the
archived copies it finds verified (without processing them again) and finishes the rest.
"""

from __future__ import annotations

import os
import re
import time

from legampi import archive
from tests.faults.conftest import (
    add_files,
    archived_files,
    assert_safe,
    events,
    finish,
    kill,
    poll,
    rows_by_name,
    set_options,
    sha256_file,
    start_mpi,
    temp_files,
    wait_ranks,
)

MB = 1 << 20


def test_sigkill_worker_mid_file(workspace) -> None:
    ws = workspace
    big = add_files(ws, "big", 1, 200 * MB, block=os.urandom(MB))
    small = add_files(ws, "small", 3, 300_000, dataset="DS2")
    job = start_mpi(ws, 3, "process", tag="killed")
    ranks = wait_ranks(job, 3)
    temp = poll(lambda: [t for t in temp_files(ws) if t.name.startswith(".big00")], "the big file's temp file")[0]
    pid = int(re.search(archive.TEMP_MARKER + r"(\d+)-", temp.name).group(1))  # type: ignore[union-attr]
    assert pid in ranks.values() and pid != ranks[0], f"temp {temp.name} is not a worker rank's ({ranks})"
    kill(pid)
    t0 = time.monotonic()
    rc, _out, err = finish(job, timeout=60)
    assert rc != 0, f"mpiexec ended 0 after a worker was killed:\n{err}"
    assert time.monotonic() - t0 < 30, "mpiexec did not end the job promptly after a rank died"

    src = ws.processing / big[0]["name"]
    final = archive.final_path(ws.end_storage, big[0]["name"], (".c4gh",))
    assert src.is_file(), "the source of the file being written when its rank died is gone"
    assert not final.exists(), "a half-written file reached its final name"
    assert rows_by_name(ws)[big[0]["name"]]["status"] != "available"

    rerun = ws.mpi(3, "process")
    assert f"temp removed: {temp.name}" in rerun.stderr, rerun.stderr
    assert_safe(ws, big + small, complete=True)


def test_sigkill_rank0_before_rows_written(workspace) -> None:
    ws = workspace
    set_options(ws, func_conf={"batch_size": 10000, "flush_interval": 3600})
    files = add_files(ws, "f", 14, 12 * MB, block=os.urandom(MB))
    names = {e["name"] for e in files}
    job = start_mpi(ws, 3, "process", tag="killed")
    ranks = wait_ranks(job, 3)

    def archived_unrecorded() -> list[str]:
        done = [p.name for p in archived_files(ws) if (p.parent / (p.name + ".sha256")).exists()]
        if len(done) < 2:
            return []
        rows = rows_by_name(ws)
        return done if all(rows[n]["status"] == "processing" for n in done) else []

    poll(archived_unrecorded, "archived files whose rows are still `processing`")
    kill(ranks[0])
    rc, _out, err = finish(job, timeout=60)
    assert rc != 0, err
    before = {p.name: (p.stat().st_ino, sha256_file(p)) for p in archived_files(ws)}
    rows = list(rows_by_name(ws).values())
    unrecorded = {r["file_name"] for r in rows if r["status"] == "processing"}
    assert set(before) <= unrecorded, "some archived files were recorded although rank 0 held its batch"
    assert len(before) < len(files), "every file was done before rank 0 was killed; nothing left to rerun"
    for r in rows:
        assert (ws.processing / r["file_name"]).is_file(), f"{r['file_name']}: source removed before its row"

    rerun = ws.mpi(3, "process")
    recorded = set(re.findall(r"recorded: (\S+) -> ", rerun.stderr))
    assert recorded == set(before), f"rerun recorded {recorded}, archived before the kill {set(before)}"
    after = {p.name: (p.stat().st_ino, sha256_file(p)) for p in archived_files(ws)}
    for name, ident in before.items():
        assert after[name] == ident, f"{name}: archived copy was rewritten by the rerun"
    for e in events(ws, "available"):
        assert e["file_id"] in names
    per_file = {n: sum(1 for e in events(ws, "available") if e["file_id"] == n) for n in names}
    assert all(v == 1 for v in per_file.values()), per_file
    assert f"{len(files) - len(before)} file(s)" in rerun.stdout, rerun.stdout
    assert_safe(ws, files, complete=True)
