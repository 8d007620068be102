"""`sbatch -N 3 jobscripts/ingest.sbatch` on a three-node Slurm (one slurmd per bed host)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.conftest import Workspace
from tests.faults.conftest import add_files, assert_safe, connect
from tests.multihost.bed import Bed
from tests.multihost.slurm import MultiSlurm

pytestmark = [pytest.mark.multihost, pytest.mark.slurm]
REPO = Path(__file__).resolve().parents[2]
LEGAMPI = str(Path(sys.executable).parent / "legampi")


@pytest.mark.parametrize("mh_workspace", ["postgresql"], indirect=True)
def test_sbatch_three_nodes_archives_a_dataset(bed: Bed, mh_slurm: MultiSlurm, mh_workspace: Workspace) -> None:
    ws = mh_workspace
    entries = add_files(ws, "node", 9, 700_000) + add_files(ws, "big", 2, 3_000_000, dataset="DS2")
    env = {"LEGAMPI": LEGAMPI}
    job = mh_slurm.sbatch(REPO / "jobscripts" / "ingest.sbatch", [str(ws.config)], ws.root, ["-N", "3"], **env)
    try:
        state = mh_slurm.wait_job_final(job, timeout=60)
    finally:
        out = "".join(p.read_text() for p in ws.root.glob(f"legampi-ingest-{job}.out"))
        print(out)
    assert state == "COMPLETED", f"job {job} {state}\n{out}\n{mh_slurm.logs()}"
    assert mh_slurm.job_field(job, "NodeList") == f"{bed.prefix}-h[1-3]", out
    assert f"{len(entries)} file(s), {len(entries)} available, 0 failed" in out, out
    assert_safe(ws, entries, complete=True)
    # srun's block distribution of 4 tasks over 3 nodes: ranks 0 and 1 on h1, 2 on h2, 3 on h3; each
    # worker reports the node it ran on
    on = dict(re.findall(r" rank (\d+) on (\S+):", out))
    assert on == {"1": bed.names[0], "2": bed.names[1], "3": bed.names[2]}, out
    print(out)
    db = connect(ws)
    try:
        row = db.jobs(1)[0]
        assert row["job_id"].startswith(f"slurm-{job}-") and row["host"] == bed.names[0], row
    finally:
        db.close()
