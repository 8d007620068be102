"""The chaos test's schedule: what to kill, on which trigger, and the record of each kill.

Everything here is drawn from the seeded RNG up front, so `--seed N` replays the same schedule.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field

TARGETS = ("rank0", "worker", "mpiexec", "recover")
TRIGGERS = {
    "rank0": ("job-start", "claimed", "temp", "archived", "committed", "time"),
    "worker": ("claimed", "temp", "temp", "archived", "time"),
    "mpiexec": ("claimed", "temp", "archived", "committed", "time"),
    "recover": ("change",),
}


@dataclass
class Spec:
    target: str
    trigger: str
    k: int  # fire on the k-th occurrence (temps seen, commits, changes)
    u: float  # position in the calibrated delay window (time trigger)
    pick: float  # which worker rank, when the trigger does not name one

    def __str__(self) -> str:
        counted = self.trigger in ("temp", "change")
        return f"{self.target}@{self.trigger}" + (f"(k={self.k})" if counted else "")


def schedule(rng: random.Random, n: int) -> list[Spec]:
    """N kill specs: targets in shuffled rounds of all four (so every target is hit about N/4 times)."""
    out: list[Spec] = []
    while len(out) < n:
        cycle = list(TARGETS)
        rng.shuffle(cycle)
        for t in cycle:
            trigger = rng.choice(TRIGGERS[t])
            # jobs here commit in one or two batches, and recover shows one or two steps
            k = rng.randint(1, {"temp": 3, "change": 2}.get(trigger, 1))
            out.append(Spec(t, trigger, k, rng.random(), rng.random()))
    return out[:n]


@dataclass
class Calibration:
    """Timings measured on the dataset: when claims appear after a start, how fast files go through."""

    t_claim: list[float] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)  # bytes/s of a whole unkilled job after its claim
    t_recover: list[float] = field(default_factory=list)

    def process_delay(self, u: float, remaining_bytes: int) -> float:
        """Seconds after the job's first claim: uniform over the time its claimed bytes should take."""
        return u * remaining_bytes / statistics.median(self.rate or [100e6])


@dataclass
class Kill:
    n: int
    spec: Spec
    pid: int
    what: str  # e.g. "rank 2", "mpiexec"
    at: float  # seconds after the start of the run
    evidence: str
    rc: int | None = None
    notes: list[str] = field(default_factory=list)

    def line(self, backend: str) -> str:
        return (
            f"kill {self.n}: {self.spec} -> SIGKILL {self.what} (pid {self.pid}) at {self.at:.2f}s; "
            f"in flight: {self.evidence}; exit {self.rc}" + "".join(f"; {x}" for x in self.notes)
        )
