"""Process bookkeeping for the chaos test: start jobs, find their ranks, SIGKILL one, clean up after.

MPICH's hydra puts its proxy and every rank in a session of its own (setsid), so a process group of
ours would not reach them, and a rank orphaned by a killed `mpiexec` would be re-parented to init. The
harness therefore makes itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER): every process it
starts, and every descendant of those, stays its descendant until it is reaped. "Ours" is then exactly
"a descendant of this process", which is what every kill checks first: nothing else is ever signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphaned descendants (ranks of a killed mpiexec) are re-parented to us, not to init."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 = state, 1 = ppid), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _parents() -> dict[int, list[int]]:
    by_parent: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st is not None:
                by_parent.setdefault(int(st[1]), []).append(int(d))
    return by_parent


def descendants(pid: int | None = None) -> list[int]:
    """Every living (non-zombie) descendant of PID (default: this process)."""
    by_parent = _parents()
    out, todo = [], [os.getpid() if pid is None else pid]
    while todo:
        for c in by_parent.get(todo.pop(), []):
            st = _stat(c)
            if st is not None and st[0] not in ("Z", "X"):
                out.append(c)
            todo.append(c)
    return out


def reap_orphans(keep: set[int]) -> None:
    """Reap zombie children that are not Popen objects of ours (orphans re-parented to the subreaper)."""
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in keep:
            continue
        st = _stat(int(d))
        if st is not None and int(st[1]) == me and st[0] == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(d), os.WNOHANG)


def rank_of(pid: int) -> int | None:
    """PMI_RANK of a legampi rank process, None for anything else (hydra proxy, mpiexec)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    if not any(c.endswith(b"legampi") for c in cmd[:2]):
        return None
    for kv in env:
        if kv.startswith(b"PMI_RANK="):
            return int(kv.split(b"=", 1)[1])
    return None


def ranks(job: subprocess.Popen) -> dict[int, int]:
    """rank -> pid of the legampi ranks started by this mpiexec."""
    out = {}
    for pid in descendants(job.pid):
        r = rank_of(pid)
        if r is not None:
            out[r] = pid
    return out


class Procs:
    """The processes this harness started: start, kill (ours only), wait for a whole job to be gone."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.popens: dict[int, subprocess.Popen] = {}
        self.n = 0

    def start(self, cmd: list[str], tag: str, cwd: Path) -> subprocess.Popen:
        self.n += 1
        base = self.logdir / f"{self.n:03d}-{tag}"
        with open(f"{base}.out", "wb") as out, open(f"{base}.err", "wb") as err:
            p = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd, start_new_session=True)
        p.logs = (Path(f"{base}.out"), Path(f"{base}.err"))  # type: ignore[attr-defined]
        self.popens[p.pid] = p
        return p

    def kill(self, pid: int) -> bool:
        """SIGKILL PID if it is a living descendant of this process (never anyone else's process);
        False when it is not (it has just ended)."""
        if pid not in descendants():
            return False
        os.kill(pid, signal.SIGKILL)
        return True

    def wait_gone(self, job: subprocess.Popen, timeout: float) -> tuple[int | None, list[int]]:
        """Wait until JOB has exited and no descendant of ours is left (the harness runs one job at a
        time, so every descendant belongs to it, orphaned ranks included). Returns (exit status, or None
        if TIMEOUT ran out; the survivors, SIGKILLed then)."""
        deadline = time.monotonic() + timeout
        while True:
            rc = job.poll()
            reap_orphans(set(self.popens))
            alive = descendants()
            if rc is not None and not alive:
                return rc, []
            if time.monotonic() > deadline:
                survivors = sorted(set(alive))
                for pid in survivors:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                job.wait(timeout=30)
                self._drain()
                return None, survivors
            time.sleep(0.01)

    def _drain(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while descendants() and time.monotonic() < deadline:
            reap_orphans(set(self.popens))
            for p in self.popens.values():
                p.poll()
            time.sleep(0.01)

    def cleanup(self) -> list[int]:
        """SIGKILL every descendant still alive (ours by construction), reap them; returns their pids."""
        left = descendants()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for p in self.popens.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
        self._drain()
        return left
