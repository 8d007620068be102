"""Smoke tests of the local one-node Slurm cluster.

They prove the pieces legampi's job scripts rely on: ``sbatch --wait`` reports job failure, the
PyPI ``mpich`` wheel wires up through Slurm's PMI2 (``srun --mpi=pmi2``), and a USR1 sent to the
batch shell (what ``#SBATCH --signal=B:USR1@...`` does before walltime) can be forwarded to the tasks.
"""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # conftest is not importable as a module under every pytest import mode
    from conftest import SlurmCluster

pytestmark = pytest.mark.slurm

PYTHON = sys.executable
JOB_TIMEOUT = 120.0


def _write_script(path: Path, body: str) -> Path:
    """Write an executable batch script from an indented literal."""
    path.write_text(textwrap.dedent(body).lstrip())
    path.chmod(0o755)
    return path


def _sbatch_wait(cluster: SlurmCluster, script: Path, cwd: Path) -> tuple[int, str]:
    """Submit with ``--wait`` and return (exit code of sbatch, job id)."""
    proc = cluster.run(
        ["sbatch", "--wait", "--parsable", f"--chdir={cwd}", str(script)], timeout=JOB_TIMEOUT, check=False, cwd=cwd
    )
    job_id = proc.stdout.strip().split(";")[0]
    assert job_id.isdigit(), f"sbatch printed no job id: stdout={proc.stdout!r} stderr={proc.stderr!r}"
    return proc.returncode, job_id


def test_sbatch_wait_runs_trivial_job(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "hello.out"
    script = _write_script(
        tmp_path / "hello.sh",
        f"""
        #!/bin/bash
        #SBATCH -n 1
        #SBATCH -o {out}
        echo "hello from job $SLURM_JOB_ID on $(hostname -s)"
    """,
    )
    rc, job_id = _sbatch_wait(slurm_cluster, script, tmp_path)
    assert rc == 0, out.read_text() if out.exists() else "no output file"
    assert out.read_text() == f"hello from job {job_id} on {slurm_cluster.node}\n"
    assert slurm_cluster.job_field(job_id, "JobState") == "COMPLETED"


def test_srun_pmi2_wires_mpich_wheel(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "mpi.out"
    # allreduce proves the ranks really talk to each other, not just that each read PMI_SIZE.
    prog = (
        "from mpi4py import MPI; c = MPI.COMM_WORLD; "
        "print(c.Get_size(), c.Get_rank(), c.allreduce(c.Get_rank()), flush=True)"
    )
    script = _write_script(
        tmp_path / "mpi.sh",
        f"""
        #!/bin/bash
        #SBATCH -n 3
        #SBATCH -o {out}
        srun --mpi=pmi2 -n 3 {PYTHON} -c "{prog}"
    """,
    )
    rc, _ = _sbatch_wait(slurm_cluster, script, tmp_path)
    text = out.read_text()
    assert rc == 0, text
    assert sorted(text.splitlines()) == ["3 0 3", "3 1 3", "3 2 3"], text


def test_failing_task_fails_sbatch_wait(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "fail.out"
    script = _write_script(
        tmp_path / "fail.sh",
        f"""
        #!/bin/bash
        #SBATCH -n 1
        #SBATCH -o {out}
        srun -n 1 {PYTHON} -c "import sys; sys.exit(7)"
    """,
    )
    rc, job_id = _sbatch_wait(slurm_cluster, script, tmp_path)
    assert rc == 7, out.read_text() if out.exists() else "no output file"
    assert slurm_cluster.job_field(job_id, "JobState") == "FAILED"
    assert slurm_cluster.job_field(job_id, "ExitCode") == "7:0"


SIGNAL_TASK = """
import signal
import sys
from pathlib import Path

ready, marker = Path(sys.argv[1]), Path(sys.argv[2])
# Block USR1 before announcing readiness so a signal sent right after cannot be lost or kill us.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
ready.write_text("ready\\n")
info = signal.sigtimedwait({signal.SIGUSR1}, 60)
if info is None:
    sys.exit("task: no SIGUSR1 within 60s")
marker.write_text(f"got {signal.Signals(info.si_signo).name}\\n")
"""


def test_usr1_to_batch_shell_is_forwarded_to_task(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "signal.out"
    ready = tmp_path / "task.ready"
    marker = tmp_path / "task.marker"
    task = tmp_path / "task.py"
    task.write_text(SIGNAL_TASK)
    # The pattern legampi's job scripts use: run srun in the background so the shell can run its
    # trap at once (bash defers traps while a foreground child runs), forward USR1 to srun (srun
    # relays USR1 to every task), and re-wait because a trapped signal interrupts `wait`.
    script = _write_script(
        tmp_path / "signal.sh",
        f"""
        #!/bin/bash
        #SBATCH -n 1
        #SBATCH -o {out}
        trap 'echo "batch: got USR1, forwarding to srun $srun_pid"; kill -USR1 "$srun_pid"' USR1
        srun -n 1 {PYTHON} {task} {ready} {marker} &
        srun_pid=$!
        while :; do
            wait "$srun_pid"; rc=$?
            [ "$rc" -le 128 ] && break
            if ! kill -0 "$srun_pid" 2>/dev/null; then wait "$srun_pid"; rc=$?; break; fi
        done
        echo "batch: srun exited $rc"
        exit "$rc"
    """,
    )
    proc = slurm_cluster.run(["sbatch", "--parsable", f"--chdir={tmp_path}", str(script)], cwd=tmp_path)
    job_id = proc.stdout.strip().split(";")[0]

    deadline = time.monotonic() + JOB_TIMEOUT
    while not ready.exists():
        state = slurm_cluster.job_field(job_id, "JobState")
        output = out.read_text() if out.exists() else ""
        assert state not in {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, f"job ended early: {state}\n{output}"
        assert time.monotonic() < deadline, f"task never became ready (job {state})\n{output}"
        time.sleep(0.2)

    # --batch signals only the batch shell, not srun or the task: delivery to the task must go via the trap.
    slurm_cluster.run(["scancel", "--signal=USR1", "--batch", job_id])
    state = slurm_cluster.wait_job_final(job_id, timeout=JOB_TIMEOUT)
    output = out.read_text()
    assert state == "COMPLETED", output
    assert slurm_cluster.job_field(job_id, "ExitCode") == "0:0", output
    assert marker.read_text() == "got SIGUSR1\n", output
    assert "batch: got USR1, forwarding to srun" in output
    assert "batch: srun exited 0" in output
