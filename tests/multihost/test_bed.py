"""The bed itself: removed completely, also when its owner died without removing it; the benchmark runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.multihost import bed as bedlib
from tests.multihost.bed import STATE_ROOT, Bed

pytestmark = pytest.mark.multihost
REPO = Path(__file__).resolve().parents[2]


def _leftovers(index: int) -> list[str]:
    prefix = f"{bedlib.BASE}{index}"
    found = [str(p) for p in Path("/sys/class/net").glob(f"{prefix}-*")]
    found += [str(p) for p in bedlib.NETNS_DIR.glob(f"{prefix}-*")] if bedlib.NETNS_DIR.is_dir() else []
    found += [str(STATE_ROOT / prefix)] if (STATE_ROOT / prefix).exists() else []
    return found


def _wait_inside(pid: int, netns: str | Path, timeout: float = 10.0) -> None:
    """Until process PID runs `sleep` in the network namespace NETNS (nsenter has entered it and exec'd)."""
    want = f"net:[{os.stat(netns).st_ino}]"
    deadline = time.monotonic() + timeout
    while True:
        try:
            inside = os.readlink(f"/proc/{pid}/ns/net") == want
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError as exc:
            raise AssertionError(f"process {pid} is gone before entering {netns}: {exc}") from None
        if inside and comm == "sleep":
            return
        assert time.monotonic() < deadline, f"process {pid} did not enter {netns} within {timeout} s"
        time.sleep(0.01)


def test_a_crashed_owners_bed_is_removed_by_the_next_one() -> None:
    problem = bedlib.why_not()
    if problem:
        pytest.skip(problem)
    # a bed whose owner process is gone, with a process still running on one of its hosts
    owner = subprocess.Popen([sys.executable, "-c", "pass"])
    owner.wait()
    stale = Bed.up(2, owner=owner.pid)
    sleeper = subprocess.Popen([*stale.enter(1), "sleep", "600"])
    _wait_inside(sleeper.pid, stale.host(1).netns)  # else the cleanup can run before nsenter has entered
    assert _leftovers(stale.index)
    fresh = Bed.up(2)  # starts by removing stale beds
    try:
        assert sleeper.wait(timeout=10) != 0, "the process on the stale bed's host was not stopped"
        assert not _leftovers(stale.index) or fresh.index == stale.index
    finally:
        assert not fresh.down()
    assert not _leftovers(fresh.index)
    assert not bedlib.teardown(fresh.index), "a second teardown is not a no-op"


def test_benchmark_smoke() -> None:
    problem = bedlib.why_not()
    if problem:
        pytest.skip(problem)
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "crosshost.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "across hosts" in p.stdout and "across / one host" in p.stdout, p.stdout
