"""Session fixture that brings up the one-node test Slurm cluster (tests/slurm/slurm-up.sh).

The Slurm tests run against real daemons on this machine because the job scripts, signal
forwarding and PMI2 wiring of legampi can only be proven under a real ``slurmd``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SLURM_UP = HERE / "slurm-up.sh"
SLURM_DOWN = HERE / "slurm-down.sh"
DEFAULT_CONF = "/etc/slurm/slurm.conf"
REQUIRED_BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "scontrol", "munged")
# Job states after which a job will never run again (squeue/scontrol vocabulary).
FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
)


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``slurm`` marker so ``-m slurm`` / ``-m 'not slurm'`` select these tests."""
    config.addinivalue_line("markers", "slurm: needs the local one-node Slurm cluster (tests/slurm/slurm-up.sh)")


@dataclass(frozen=True)
class SlurmCluster:
    """What a test needs to talk to the test cluster: the environment for sbatch/srun/squeue."""

    conf: str
    env: dict[str, str] = field(repr=False)
    node: str
    partition: str = "debug"

    def run(
        self, args: Sequence[str], timeout: float = 120.0, check: bool = True, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command with the cluster env; raise with its output if it fails."""
        proc = subprocess.run(
            list(args), env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def job_field(self, job_id: str, name: str) -> str:
        """One ``Key=Value`` field of ``scontrol show job`` (works without accounting until MinJobAge)."""
        out = self.run(["scontrol", "-o", "show", "job", job_id]).stdout
        for token in out.split():
            key, sep, value = token.partition("=")
            if sep and key == name:
                return value
        raise AssertionError(f"scontrol show job {job_id} has no field {name}: {out!r}")

    def wait_job_final(self, job_id: str, timeout: float = 120.0) -> str:
        """Poll until the job reaches a final state and return it; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.job_field(job_id, "JobState")
            if state in FINAL_STATES:
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {state} after {timeout}s")
            time.sleep(0.2)


def _ctld_up(env: dict[str, str]) -> bool:
    """True if a slurmctld already answers, so the session must not stop it afterwards."""
    proc = subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True, timeout=30, check=False)
    return proc.returncode == 0 and "is UP" in proc.stdout


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Start the cluster once per session.

    The daemons are left running afterwards (other sessions on this machine may share them); set
    LEGAMPI_SLURM_STOP=1 to stop them at session end if this session started them.
    """
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [b for b in REQUIRED_BINARIES if shutil.which(b, path=search) is None]
    if missing:
        pytest.skip(
            f"Slurm binaries not installed: {', '.join(missing)} (apt-get install slurmctld slurmd slurm-client munge)"
        )
    env = dict(os.environ)
    env.setdefault("SLURM_CONF", DEFAULT_CONF)
    was_up = _ctld_up(env)
    proc = subprocess.run([str(SLURM_UP)], env=env, capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{SLURM_UP} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    yield SlurmCluster(conf=env["SLURM_CONF"], env=env, node=node)
    if not was_up and os.environ.get("LEGAMPI_SLURM_STOP") == "1":
        down = subprocess.run(
            [str(SLURM_DOWN), "--keep-munge"], env=env, capture_output=True, text=True, timeout=300, check=False
        )
        if down.returncode != 0:
            raise RuntimeError(f"{SLURM_DOWN} failed ({down.returncode}):\n{down.stdout}\n{down.stderr}")
