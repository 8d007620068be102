"""Transfer monitor: decide when a file in receiving has finished arriving, then move it to processing.

The decision is a pure function of the previous observation and the current one (size and mtime), so it
is tested without a file system or database. A file moves only after ``pass_limit`` consecutive passes in
which it was unchanged and older than ``age_limit`` seconds; any change resets the count.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .workspace import move_into, scan, share

log = logging.getLogger("legampi.monitor")


@dataclass(frozen=True)
class Observation:
    size: int
    mtime: float


@dataclass(frozen=True)
class Decision:
    action: str  # 'track' (first seen), 'reset' (changed), 'wait' (too young), 'pass' (counted), 'move'
    passes: int


def decide(prev: dict[str, Any] | None, obs: Observation, now: float, age_limit: int, pass_limit: int) -> Decision:
    """Pure transfer-completion rule (the seed's, made explicit)."""
    if prev is None:
        return Decision("track", 0)
    if int(prev["size"]) != obs.size or float(prev["mtime"]) != obs.mtime:
        return Decision("reset", 0)
    if now - obs.mtime < age_limit:
        return Decision("wait", int(prev["passes"]))
    passes = int(prev["passes"]) + 1
    return Decision("move" if passes >= pass_limit else "pass", passes)


@dataclass
class PassReport:
    tracked: int = 0
    waiting: int = 0
    moved: list[str] = field(default_factory=list)
    unregistered: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def run_pass(
    db: Any,
    receiving: Path,
    processing: Path,
    age_limit: int,
    pass_limit: int,
    branches: int = 1,
    branch: int = 1,
    clock: Any = time.time,
) -> PassReport:
    """One monitor pass: observe receiving, update tracking, move finished registered files.

    The share of a pass (--branches) is taken over the live listing of receiving, as the seed did."""
    listing = dict(scan(receiving))
    file_names = share(listing, branches, branch) if branches > 1 else sorted(listing)
    tracking = db.tracking()
    # only the columns a pass reads (every pass reads every file in receiving: keep the rows small)
    rows = db.files(names=file_names, columns=("file_id", "dataset_id", "file_name", "status", "size"))
    registered = {f["file_name"]: f for f in rows}
    now = clock()
    report = PassReport()
    upserts, moved, sizes = [], [], {}
    for file_name in file_names:
        st = listing[file_name]
        obs = Observation(st.st_size, st.st_mtime)
        d = decide(tracking.get(file_name), obs, now, age_limit, pass_limit)
        f = registered.get(file_name)
        if f is None:
            report.unregistered.append(file_name)
        elif f["status"] != "pending":
            report.errors.append(
                f"{receiving / file_name}: registered file {f['file_id']} is already {f['status']}; "
                "a second copy arrived and is left in receiving"
            )
            continue
        sizes[file_name] = obs.size
        if d.action == "move" and f is not None:
            try:
                move_into(receiving / file_name, processing / file_name)
            except OSError as exc:
                report.errors.append(f"{receiving / file_name}: cannot move to processing: {exc.strerror or exc}")
                upserts.append((file_name, obs.size, obs.mtime, d.passes))
                continue
            moved.append(f)
            report.moved.append(file_name)
            log.info(
                "transfer finished, moved to processing: %s (file %s, dataset %s)",
                file_name,
                f["file_id"],
                f["dataset_id"],
            )
            continue
        if d.action == "move":  # finished but unregistered: keep counting, never move
            d = Decision("pass", d.passes)
        upserts.append((file_name, obs.size, obs.mtime, d.passes))
        report.tracked += d.action == "track"
        report.waiting += d.action != "track"
    gone = [n for n in tracking if n not in listing]
    registered_sizes = {n: s for n, s in sizes.items() if n in registered}
    db.apply_monitor_pass(upserts, gone + [m["file_name"] for m in moved], moved, registered_sizes)
    return report
