"""What rank 0 tells the operator while and after a job runs: live progress and the job's summary.

`Progress` serves every MPI command (process, verify-archive, rekey, export); `Summary` is the per-rank
account of a `process` job that is printed and stored with the job row.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .dispatch import RankFailed

if TYPE_CHECKING:
    from .stream import FileResult

log = logging.getLogger("legampi.progress")
SKIPPED_SHOWN = 50  # skipped files named in the summary (and the job row); the log names all


@dataclass
class Summary:
    job_id: str
    files: int = 0
    available: int = 0
    failed: int = 0
    bytes: int = 0
    bytes_available: int = 0
    seconds: float = 0.0
    ranks: dict[int, list[float]] = field(default_factory=dict)  # rank -> [files, bytes, seconds]
    hosts: dict[int, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    released: int = 0
    stopped: bool = False
    skipped: list[str] = field(default_factory=list)  # files in processing this job left alone, and why
    taken: int = 0  # candidates another job claimed before this one could (theirs: not an error)

    def add(self, r: FileResult) -> None:
        """Fold one result in (rank 0 keeps these totals, not every result: memory stays O(failures))."""
        self.files += 1
        self.bytes += r.bytes_read
        if r.status == "available":
            self.available += 1
            self.bytes_available += r.bytes_read
        else:
            self.failed += 1
            self.failures.append(f"{r.rel} (file {r.file_id}): {r.error}")
        acc = self.ranks.setdefault(r.rank, [0, 0, 0.0])
        acc[0] += 1
        acc[1] += r.bytes_read
        acc[2] += r.seconds
        self.hosts[r.rank] = r.host

    def rank_rows(self) -> list[tuple[int, str, int, int, float]]:
        return [(k, self.hosts.get(k, ""), int(v[0]), int(v[1]), float(v[2])) for k, v in sorted(self.ranks.items())]

    def lines(self) -> list[str]:
        mbs = self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0
        out = [
            f"job {self.job_id}: {self.files} file(s), {self.available} available, {self.failed} failed, "
            f"{self.bytes / 1e6:.1f} MB in {self.seconds:.1f}s = {mbs:.1f} MB/s overall "
            f"({self.bytes_available / 1e6:.1f} MB available, "
            f"{(self.bytes - self.bytes_available) / 1e6:.1f} MB failed)"
            + (" (stopped early by signal)" if self.stopped else "")
        ]
        for rank, host, files, nbytes, secs in self.rank_rows():
            rate = nbytes / secs / 1e6 if secs > 0 else 0.0
            out.append(
                f"  rank {rank} on {host}: {files} file(s), {nbytes / 1e6:.1f} MB, busy {secs:.1f}s, {rate:.1f} MB/s"
            )
        if self.released:
            out.append(f"  {self.released} claimed file(s) not started were released for the next run")
        out += [f"  FAILED {f}" for f in self.failures]
        if self.taken:
            out.append(f"  {self.taken} file(s) were claimed first by other jobs sharing the backlog")
        if self.skipped:
            out.append(f"  {len(self.skipped)} file(s) in processing skipped:")
            out += [f"  SKIPPED {x}" for x in self.skipped[:SKIPPED_SHOWN]]
            if len(self.skipped) > SKIPPED_SHOWN:
                out.append(f"  ... and {len(self.skipped) - SKIPPED_SHOWN} more (the log lists every one)")
        return out


class Progress:
    """Rank 0's progress in any MPI command: a live line on a terminal, a log line every interval in
    batch jobs (with the command's logger)."""

    def __init__(
        self,
        total_files: int,
        total_bytes: int,
        interval: float = 60.0,
        stream: Any = None,
        logger: logging.Logger = log,
    ) -> None:
        self.total_files, self.total_bytes, self.interval, self.log = total_files, total_bytes, interval, logger
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.files = self.bytes = self.failed = 0
        self.start = self.last = time.monotonic()

    def add(self, nbytes: int, failed: bool = False) -> None:
        """One more file done (NBYTES read), whatever the command."""
        self.files += 1
        self.bytes += nbytes
        self.failed += failed

    def line(self) -> str:
        el = max(time.monotonic() - self.start, 1e-9)
        rate = self.bytes / el
        left = (self.total_bytes - self.bytes) / rate if rate > 0 else float("nan")
        eta = f"{left / 60:.1f} min" if left == left else "?"
        return (
            f"{self.files}/{self.total_files} files, {self.bytes / 1e9:.2f}/{self.total_bytes / 1e9:.2f} GB, "
            f"{rate / 1e6:.1f} MB/s, {self.failed} failed, ~{eta} left"
        )

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty and (force or now - self.last >= 0.5):
            self.stream.write("\r" + self.line() + "\x1b[K")
            self.stream.flush()
            self.last = now
        elif not self.tty and (force or now - self.last >= self.interval):
            self.log.info(
                "progress: %s", self.line(), extra={"bytes": self.bytes, "seconds": round(now - self.start, 3)}
            )
            self.last = now

    def close(self) -> None:
        if self.tty:
            self.tick(force=True)
            self.stream.write("\n")


def skip_reason(r: dict[str, Any]) -> str:
    """Why a registered file in processing was not claimed by this job (for the summary)."""
    if r["status"] == "processing":
        return f"{r['file_name']}: claimed by job {r['claimed_by']} since {r['claimed_at']}"
    if r["status"] == "failed":
        return f"{r['file_name']}: failed ({r['error'] or 'no reason recorded'}); --retry-failed tries it again"
    return f"{r['file_name']}: status {r['status']}"


def with_job(line: str, jobs: dict[str, dict[str, Any]]) -> str:
    """Name the claiming job's host and last heartbeat, or say that it has ended."""
    job_id = line.split(" claimed by job ", 1)[1].split(" ", 1)[0] if " claimed by job " in line else ""
    j = jobs.get(job_id)
    if not job_id:
        return line
    if j is None:
        return line + " (that job has ended)"
    return line + f" (a running job on host {j['host']}, pid {j['pid']}, last heartbeat {j['heartbeat_at']})"


@contextmanager
def record_crash(recorder: Any, job_id: str) -> Iterator[None]:
    """A worker's crash report (RankFailed): record what was done and the report in the job row, then
    let the job end (its claims go on the next run's recover: the job has ended)."""
    try:
        yield
    except RankFailed as exc:
        try:
            recorder.close()
            lines = [*recorder.summary.lines(), f"  CRASHED {exc}"]
            recorder.db.job_end(job_id, 1, "\n".join(lines), recorder.summary.rank_rows())
        except Exception as e:  # noqa: BLE001 - the database may be the problem; the report is in the log
            log.error("could not record the crash in the job row: %s", e)
        raise
