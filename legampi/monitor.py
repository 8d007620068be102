"""Transfer monitor: decide when a file in receiving has finished arriving, then move it to processing.

The decision is a pure function of the previous observation and the current one (size and mtime), so it
is tested without a file system or database. A file moves only after ``pass_limit`` consecutive passes in
which it was unchanged and older than ``age_limit`` seconds; any change resets the count.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def share(items: list[str], branches: int, branch: int) -> list[str]:
    """The seed's split: file number ``branch + branches*n`` (1-based) of the sorted listing."""
    if branches < 1 or not 1 <= branch <= branches:
        raise ValueError(f"--branch must be between 1 and --branches ({branches}), got {branch}")
    ordered = sorted(items)
    return [name for i, name in enumerate(ordered, 1) if (i - branch) % branches == 0]


def scan(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Regular files under ROOT as (relative POSIX path, lstat); symlinks and special files are skipped."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            it = os.scandir(folder)
        except FileNotFoundError:
            if folder == root:
                raise
            continue  # a subfolder removed while we walk (another job, an operator): nothing to list
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # gone between listing and stat (a live job's short-lived temp file)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(Path(entry.path))
                elif stat.S_ISREG(st.st_mode):
                    yield Path(entry.path).relative_to(root).as_posix(), st
                else:
                    kind = "symbolic link" if stat.S_ISLNK(st.st_mode) else "special file"
                    log.warning("ignoring %s %s (never followed or moved)", kind, entry.path)


def move_into(src: Path, dst: Path) -> None:
    """Rename SRC to DST (folders created); across file systems copy, fsync, rename, then unlink."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(errno.EEXIST, "destination already exists", str(dst))
    try:
        os.rename(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    tmp = dst.with_name(f".{dst.name}.legampi-move-{os.getpid()}")
    try:
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            shutil.copyfileobj(fin, fout, 4 * 1024 * 1024)
            fout.flush()
            os.fsync(fout.fileno())
        os.rename(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.unlink(src)


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
    """One monitor pass: observe receiving, update tracking, move finished registered files."""
    listing = dict(scan(receiving))
    names = share(list(listing), branches, branch) if branches > 1 else sorted(listing)
    tracking = db.tracking()
    registered = {f["file_name"]: f for f in db.files(names=names)}
    now = clock()
    report = PassReport()
    upserts, moved, sizes = [], [], {}
    for name in names:
        st = listing[name]
        obs = Observation(st.st_size, st.st_mtime)
        d = decide(tracking.get(name), obs, now, age_limit, pass_limit)
        f = registered.get(name)
        if f is None:
            report.unregistered.append(name)
        elif f["status"] != "pending":
            report.errors.append(
                f"{receiving / name}: registered file {f['file_id']} is already {f['status']}; "
                "a second copy arrived and is left in receiving"
            )
            continue
        sizes[name] = obs.size
        if d.action == "move" and f is not None:
            try:
                move_into(receiving / name, processing / name)
            except OSError as exc:
                report.errors.append(f"{receiving / name}: cannot move to processing: {exc.strerror or exc}")
                upserts.append((name, obs.size, obs.mtime, d.passes))
                continue
            moved.append(f)
            report.moved.append(name)
            log.info(
                "transfer finished, moved to processing: %s (file %s, dataset %s)", name, f["file_id"], f["dataset_id"]
            )
            continue
        if d.action == "move":  # finished but unregistered: keep counting, never move
            d = Decision("pass", d.passes)
        upserts.append((name, obs.size, obs.mtime, d.passes))
        report.tracked += d.action == "track"
        report.waiting += d.action != "track"
    gone = [n for n in tracking if n not in listing]
    db.apply_monitor_pass(
        upserts, gone + [m["file_name"] for m in moved], moved, {n: s for n, s in sizes.items() if n in registered}
    )
    return report
