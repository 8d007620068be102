"""`legampi process` under real mpiexec: -n 1/3/4, both schedules, both database backends."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from crypt4gh.lib import decrypt

from legampi.parallel import order
from legampi.workspace import share_of

pytestmark = pytest.mark.mpi
HOOK = Path(__file__).parent / "crashhook"


def _status(ws) -> dict:
    return json.loads(ws.legampi("status", "--json").stdout)


def _events(ws, event: str) -> list[dict]:
    from legampi.config import load
    from legampi.db import Database

    db = Database.connect(load(ws.config).database)
    try:
        return db.events(event=event)
    finally:
        db.close()


def _jobs(ws) -> list[dict]:
    from legampi.config import load
    from legampi.db import Database

    db = Database.connect(load(ws.config).database)
    try:
        return db.jobs()
    finally:
        db.close()


def _plain_of(ws, archived: Path) -> bytes:
    import io

    from crypt4gh.keys import get_private_key

    sk = get_private_key(str(ws.archive_sk), lambda: None)
    out = io.BytesIO()
    with open(archived, "rb") as fh:
        decrypt([(0, sk, None)], fh, out)
    return out.getvalue()


def _dataset(ws, sizes: list[int], ds: str = "DS1") -> list[dict]:
    entries = [ws.add_file(f"{ds}/s{i:02d}/f{i:02d}.bam.c4gh", size) for i, size in enumerate(sizes)]
    ws.legampi("register", str(ws.manifest(ds, entries)), "--dataset", ds)
    return entries


@pytest.mark.parametrize("n,schedule", [(3, "dynamic"), (4, "static"), (4, "dynamic")])
def test_process_archives_every_file(workspace, n, schedule):
    sizes = [0, 1, 65535, 65536, 65537, 300_000, 1_000_000, 50_000, 7, 200_000, 123_456]
    entries = _dataset(workspace, sizes)
    p = workspace.mpi(n, "process", "--schedule", schedule)
    assert f"{len(sizes)} file(s), {len(sizes)} available, 0 failed" in p.stdout
    st = _status(workspace)
    assert {f["status"] for f in st["files"]} == {"available"}
    assert st["datasets"][0]["date_processing_end"] is not None
    for e in entries:
        archived = workspace.end_storage / e["name"]
        assert archived.is_file()
        assert _plain_of(workspace, archived) == e["plain"]
        assert not (workspace.processing / e["name"]).exists(), "source removed after the row was committed"
    # every worker rank did some work, rank 0 none
    ranks = {int(m) for m in re.findall(r" rank (\d+) on ", p.stdout)}
    assert ranks == set(range(1, n))


def test_static_schedule_follows_the_seed_formula(workspace):
    """File number branch + branches*n (1-based, sorted listing) goes to worker rank `branch`."""
    entries = _dataset(workspace, [1000 + i for i in range(10)])
    workspace.mpi(4, "process", "--schedule", "static")
    names = sorted(e["name"] for e in entries)
    rank_of = {}
    for ev in _events(workspace, "available"):
        m = re.search(r" rank (\d+)$", ev["details"])
        rank_of[ev["file_id"]] = int(m.group(1))
    for i, name in enumerate(names, 1):
        branch = (i - 1) % 3 + 1
        assert rank_of[name] == branch, (i, name)


def test_dynamic_schedule_hands_out_largest_first(workspace):
    """With one worker the order of results is the order of dispatch: largest first."""
    sizes = [5000, 900_000, 20, 300_000, 70_000, 1_500_000]
    entries = _dataset(workspace, sizes)
    workspace.mpi(2, "process")
    done = [ev["file_id"] for ev in _events(workspace, "available")]
    by_size = [e["name"] for e in sorted(entries, key=lambda e: -e["size"])]
    assert done == by_size


def test_order_functions():
    tasks = list(range(1, 11))
    (dyn,) = order(tasks, "dynamic", key=lambda t: t * 7 % 11, name=str, workers=3)
    assert list(dyn) == sorted(tasks, key=lambda t: (-(t * 7 % 11), str(t)))
    static = order(tasks, "static", key=lambda t: 0, name=lambda t: f"{t:02d}", workers=3)
    assert [list(q) for q in static] == [[1, 4, 7, 10], [2, 5, 8], [3, 6, 9]]
    with pytest.raises(ValueError):
        order(tasks, "random", key=lambda t: 0, name=str, workers=3)


def test_single_rank_runs_in_process(workspace):
    _dataset(workspace, [10, 20_000])
    p = workspace.legampi("process")
    assert "2 file(s), 2 available, 0 failed" in p.stdout
    assert "rank 0 on" in p.stdout


def test_srun_without_pmi_is_refused(workspace):
    _dataset(workspace, [10])
    p = workspace.legampi("process", check=False, env={"SLURM_STEP_NUM_TASKS": "3"})
    assert p.returncode != 0
    assert "--mpi=pmi2" in p.stderr
    assert _status(workspace)["files"][0]["status"] == "pending", "nothing claimed or touched"


def test_a_rank_that_raises_ends_the_job(workspace):
    _dataset(workspace, [100_000] * 6)
    env = {"PYTHONPATH": f"{HOOK}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "LEGAMPI_TEST_CRASH_RANK": "2"}
    t0 = time.monotonic()
    p = workspace.mpi(3, "process", check=False, env=env, timeout=120)
    assert p.returncode != 0
    assert "injected crash on rank 2" in p.stderr
    assert time.monotonic() - t0 < 120  # bounded by the timeout above; a hang raises TimeoutExpired
    # the worker's report reached rank 0 as a message, and rank 0 recorded it in the job row
    crashed = [j for j in _jobs(workspace) if "CRASHED" in (j["summary"] or "")]
    assert crashed and "injected crash on rank 2" in crashed[0]["summary"], _jobs(workspace)
    assert crashed[0]["exit_status"] == 1
    # the rerun releases the dead job's claims, removes its temp files and finishes the job
    workspace.mpi(3, "process")
    assert {f["status"] for f in _status(workspace)["files"]} == {"available"}
    assert not [q for q in workspace.end_storage.rglob("*") if ".legampi-tmp-" in q.name]


def test_failed_file_is_recorded_and_the_job_goes_on(workspace):
    entries = [workspace.add_file(f"x/f{i}.bam.c4gh", 30_000) for i in range(4)]
    entries[1] = dict(entries[1], md5="0" * 32)
    workspace.legampi("register", str(workspace.manifest("DSX", entries)), "--dataset", "DSX")
    p = workspace.mpi(3, "process", check=False)
    assert p.returncode == 1
    assert "3 available, 1 failed" in p.stdout
    assert "x/f1.bam.c4gh" in p.stdout and "md5" in p.stdout
    files = {f["file_name"]: f for f in _status(workspace)["files"]}
    assert files["x/f1.bam.c4gh"]["status"] == "failed"
    assert "md5" in files["x/f1.bam.c4gh"]["error"]
    assert (workspace.processing / "x/f1.bam.c4gh").exists(), "a failed source stays"
    assert not (workspace.end_storage / "x/f1.bam.c4gh").exists()


def test_array_share_takes_seed_share(workspace):
    """Shares come from the registration numbers (file number = branch + branches*n; workspace.share_of),
    so sequential array tasks still cover every file even though each removes its sources (the live
    listing shrinks)."""
    _dataset(workspace, [100 + i for i in range(7)])
    workspace.legampi("process", "--branches", "3", "--branch", "2")
    st = {f["file_name"]: f["status"] for f in _status(workspace)["files"]}
    mine = {f["file_name"] for f in _status(workspace)["files"] if share_of(f["file_number"], 3) == 2}
    assert {n for n, s in st.items() if s == "available"} == mine
    env = {
        "SLURM_ARRAY_TASK_COUNT": "3",
        "SLURM_ARRAY_TASK_ID": "13",
        "SLURM_ARRAY_TASK_MIN": "10",
        "SLURM_ARRAY_TASK_STEP": "3",
    }
    workspace.legampi("process", env=env)  # task 13 of 10,13,16 is branch 2: nothing left for it
    workspace.legampi("process", env=dict(env, SLURM_ARRAY_TASK_ID="10"))
    workspace.legampi("process", env=dict(env, SLURM_ARRAY_TASK_ID="16"))
    assert {f["status"] for f in _status(workspace)["files"]} == {"available"}
    assert len(_events(workspace, "available")) == 7, "each file archived exactly once"
    bad = workspace.legampi("process", env=dict(env, SLURM_ARRAY_TASK_ID="11"), check=False)
    assert bad.returncode != 0 and "not on the range" in bad.stderr
