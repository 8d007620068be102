"""Run a contender with a memory limit that covers the page cache: storage larger than memory, simulated.

With 24 GiB of RAM every benchmark file stays in the page cache, so the seed method's extra passes
(plaintext written to disk and read back, ciphertext read back for its md5) cost only memory copies.
On an archive node the data is many times the RAM and those passes go to the disk. A memory cgroup
whose limit is far below the data size gives every contender that condition at once: the pages a
contender writes are charged to the cgroup, and past the limit the kernel writes them back and drops
them, so whatever is read again comes from the disk. The harness joins the cgroup for the duration of
one contender run; everything it starts (forked pools, bash pipelines, mpiexec and its ranks) inherits
it. Needs root and the cgroup memory controller (v2, or v1 as on this machine).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

V2 = Path("/sys/fs/cgroup")
V1 = Path("/sys/fs/cgroup/memory")


def why_unavailable() -> str | None:
    """None if a memory cgroup can be made here, else the reason."""
    if os.geteuid() != 0:
        return "--memory-limit needs root (it creates a memory cgroup)"
    if _root() is None:
        return "--memory-limit: no cgroup memory controller (neither v2 with memory nor v1 memory)"
    return None


def _root() -> tuple[Path, int] | None:
    controllers = V2 / "cgroup.controllers"
    if controllers.exists() and "memory" in controllers.read_text().split():
        return V2, 2
    if (V1 / "memory.limit_in_bytes").exists():
        return V1, 1
    return None


class MemoryCage:
    """A fresh memory cgroup with LIMIT bytes; `with cage:` runs this process (and what it starts) in it."""

    def __init__(self, limit: int) -> None:
        found = _root()
        if found is None:
            raise RuntimeError(why_unavailable() or "no memory cgroup")
        self.root, self.version = found
        self.limit = limit
        self.path = self.root / f"legampi-bench-{os.getpid()}-{time.monotonic_ns()}"
        self.peak: int | None = None

    def __enter__(self) -> MemoryCage:
        self.path.mkdir()
        if self.version == 2:
            (self.path / "memory.max").write_text(str(self.limit))
            (self.path / "memory.swap.max").write_text("0")
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(self.limit))
        self._origin = self._current()
        (self.path / "cgroup.procs").write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc: object) -> None:
        (self._origin / "cgroup.procs").write_text(str(os.getpid()))
        peak = self.path / ("memory.peak" if self.version == 2 else "memory.max_usage_in_bytes")
        if peak.exists():
            self.peak = int(peak.read_text())
        for _ in range(50):  # the last children may still be exiting
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"cannot remove the memory cgroup {self.path} (processes still in it?)")

    def _current(self) -> Path:
        """This process's cgroup in the same hierarchy (to come back to it)."""
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _id, controllers, rel = line.split(":", 2)
            if (self.version == 2 and controllers == "") or (self.version == 1 and "memory" in controllers.split(",")):
                return self.root / rel.lstrip("/")
        return self.root
