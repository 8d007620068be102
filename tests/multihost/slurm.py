"""A multi-node Slurm cluster over the hosts of a test bed (tests/multihost/bed.py).

slurmctld runs in the root namespace on the bed's gateway address; one slurmd per bed host runs in that
host's network and UTS namespaces (`nsenter --net --uts`, not `ip netns exec`, which would remount /sys
and hide the cgroup tree) with `-N HOST`, its own spool, pid file and log, and listens on the host's
address. munged is shared: its socket is a file, which every namespace reaches.

Separate from the one-node cluster of tests/slurm (its own slurm.conf under the bed's state folder,
cluster name lmhN, slurmctld port 6900+N; clients find it through SLURM_CONF in `MultiSlurm.env`), so
both can run at once. Everything lives under the bed's state folder and its processes are stopped by
the bed's teardown (slurmctld is recorded there; the slurmds and their jobs are inside its namespaces).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.multihost.bed import Bed, BedError

SBIN = ["/usr/sbin", "/sbin"]
FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
)
REQUIRED = ("slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo", "munge", "unmunge")


def why_not() -> str | None:
    """Why no multi-node Slurm can run here (a skip reason), or None."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    missing = [b for b in REQUIRED if shutil.which(b, path=path) is None]
    if missing:
        return f"Slurm not installed ({', '.join(missing)}): apt-get install slurmctld slurmd slurm-client munge"
    return None


def _munge_ok() -> bool:
    p = subprocess.run("munge -n | unmunge", shell=True, capture_output=True, check=False)
    return p.returncode == 0


@dataclass
class MultiSlurm:
    """The cluster's client environment and helpers; create with `MultiSlurm.up(bed)`."""

    bed: Bed
    conf: Path
    env: dict[str, str] = field(repr=False)
    partition: str = "mh"

    @classmethod
    def up(cls, bed: Bed, cpus: int = 4, mem_mb: int = 1024, timeout: float = 60.0) -> MultiSlurm:
        """Write the config, start slurmctld and one slurmd per host, wait until every node is idle."""
        problem = why_not()
        if problem:
            raise BedError(problem)
        if not _munge_ok():
            raise BedError("munged is not running (tests/slurm/slurm-up.sh starts it; .ci/run does)")
        root = bed.state / "slurm"
        for d in ("ctld", "spool", "log", *(f"spool/{h.name}" for h in bed.hosts)):
            (root / d).mkdir(parents=True, exist_ok=True)  # slurmd makes no spool folder of its own
        conf = root / "slurm.conf"
        controller = socket.gethostname().split(".")[0]
        nodes = "\n".join(
            f"NodeName={h.name} NodeAddr={h.addr} NodeHostname={h.name} CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN"
            for h in bed.hosts
        )
        conf.write_text(
            f"""# multi-node test cluster of bed {bed.index} (tests/multihost/slurm.py); removed with the bed
ClusterName={bed.prefix}
SlurmctldHost={controller}({bed.gateway})
SlurmctldPort={6900 + bed.index}
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=pmi2
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation={root / "ctld"}
SlurmdSpoolDir={root / "spool"}/%n
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "spool"}/slurmd-%n.pid
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log"}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
{nodes}
PartitionName=mh Nodes={",".join(bed.names)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""",
            encoding="utf-8",
        )
        env = dict(os.environ, SLURM_CONF=str(conf))
        env["PATH"] = os.pathsep.join([env.get("PATH", ""), *SBIN])
        cluster = cls(bed, conf, env)
        cluster._daemon(["slurmctld", "-f", str(conf)], None, root / "slurmctld.pid", "slurmctld")
        ping = ["scontrol", "ping"]
        cluster._wait(lambda: "is UP" in cluster.run(ping, check=False).stdout, "slurmctld to answer", timeout)
        for h in bed.hosts:
            pidfile = root / "spool" / f"slurmd-{h.name}.pid"
            cluster._daemon(["slurmd", "-f", str(conf), "-N", h.name], h.name, pidfile, "slurmd")

        def all_idle() -> bool:
            out = cluster.run(["sinfo", "-h", "-N", "-o", "%N %T"], check=False).stdout.split("\n")
            states = dict(line.split() for line in out if line.strip())
            return all(states.get(n) == "idle" for n in bed.names)

        cluster._wait(all_idle, "every node idle", timeout)
        return cluster

    def _daemon(self, cmd: list[str], host: str | None, pidfile: Path, what: str) -> None:
        """Start a daemon (it forks itself) in the root namespace or on HOST; record root-side ones."""
        full = [*self.bed.enter(host), *cmd] if host else cmd
        p = subprocess.run(full, env=self.env, capture_output=True, text=True, timeout=60, check=False)
        if p.returncode != 0:
            raise BedError(f"{' '.join(full)} exited {p.returncode}: {p.stderr.strip()}\n{self.logs()}")
        self._wait(lambda: pidfile.is_file() and pidfile.read_text().strip().isdigit(), f"{what} pid file", 30)
        if host is None:
            self.bed.keep_pid(int(pidfile.read_text()), what)

    def _wait(self, cond: object, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not cond():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise BedError(f"multi-node Slurm: timed out waiting for {what}\n{self.logs()}")
            time.sleep(0.1)

    def logs(self, lines: int = 30) -> str:
        """The last lines of every daemon log (for failure messages)."""
        out = []
        for log in sorted((self.bed.state / "slurm" / "log").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"----- {log.name}\n" + "\n".join(text))
        return "\n".join(out)

    def run(
        self, args: Sequence[str], timeout: float = 120.0, check: bool = True, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A Slurm client command against this cluster (from the root namespace)."""
        p = subprocess.run(list(args), env=self.env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def job_field(self, job_id: str, name: str) -> str:
        out = self.run(["scontrol", "-o", "show", "job", job_id]).stdout
        for token in out.split():
            key, sep, value = token.partition("=")
            if sep and key == name:
                return value
        raise AssertionError(f"scontrol show job {job_id} has no field {name}: {out!r}")

    def wait_job_final(self, job_id: str, timeout: float = 120.0) -> str:
        """Poll (every 0.1 s: `sbatch --wait` polls every few seconds) until the job has ended."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.job_field(job_id, "JobState")
            if state in FINAL_STATES:
                return state
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id} still {state} after {timeout}s\n{self.logs()}\n----- processes\n{self.bed.ps()}"
                )
            time.sleep(0.1)

    def sbatch(self, script: Path, args: Sequence[str], cwd: Path, options: Sequence[str] = (), **env: str) -> str:
        """Submit SCRIPT from CWD (its environment exported to the job, as at a site); returns the job id."""
        cmd = ["sbatch", "--parsable", f"--chdir={cwd}", *options, str(script), *args]
        p = subprocess.run(cmd, env=dict(self.env, **env), cwd=cwd, capture_output=True, text=True, timeout=60)
        job_id = p.stdout.strip().split(";")[0]
        if p.returncode != 0 or not job_id.isdigit():
            raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}: {p.stdout} {p.stderr}")
        return job_id
