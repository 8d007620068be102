"""Which files a `process` job takes: its candidates, listed once, claimed in batches as workers need them.

A job lists its candidates at the start (registered, in processing, eligible, of its --dataset and
array share) in the order its schedule wants, then claims them a batch at a time (`Claims.more`), each
claim one transaction (`db.claim`, the arbiter: a file another job claimed meanwhile is simply not
ours, counted in `taken`). So jobs started together, or one started mid-run, each take a fair part of
one backlog instead of the first one taking it all. Plain Python: no ranks, no MPI.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from . import archive
from .config import Config
from .db import Database, chunks
from .progress import skip_reason, with_job
from .stream import FileTask
from .workspace import in_share, scan

log = logging.getLogger("legampi.ingest")

PLAN_COLUMNS = (
    "file_id",
    "dataset_id",
    "file_name",
    "status",
    "md5",
    "sha256",
    "transfer_checksum",
    "transfer_checksum_type",
    "claimed_by",
    "claimed_at",
    "error",
    "file_number",
)
CLAIM_AHEAD = 2.0  # seconds of work (at the rate seen so far) a batch holds: what other jobs cannot take
FIRST_FILES = 2  # per worker in a batch before any result: every worker's minimum queue in dispatch
FIRST_BYTES = 64 * 1024 * 1024  # per worker in a batch before any result (dispatch's queue bound)
MAX_FILES = 1000  # in one batch (one claim transaction), whatever the rate


@dataclass
class Plan:
    tasks: list[FileTask]  # candidates (`candidates`) or claimed files (`plan`)
    unregistered: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # registered but not eligible (e.g. failed, claimed)


def candidates(
    db: Database,
    cfg: Config,
    branches: int = 1,
    branch: int = 1,
    retry_failed: bool = False,
    dataset: str | None = None,
    schedule: str = "dynamic",
) -> Plan:
    """The files in processing this job may claim, in schedule order (dynamic: largest first; static:
    by name), with the unregistered ones (reported by branch 1 alone) and the skipped ones and why.

    Array task BRANCH of BRANCHES takes the files whose file number = branch + branches*n, the file
    number being the file's registration number (file_number; `workspace.in_share`): given once by
    the database, so a file registered while tasks plan is in exactly one share. The share is taken
    here, not in SQL: rows are read by name to tell the unregistered files anyway."""
    listing = {file_name: st.st_size for file_name, st in scan(cfg.workspaces.processing)}
    eligible = ("pending", "received") + (("failed",) if retry_failed else ())
    out = Plan([])
    # rows read in chunks: rank 0 holds one small task per file, whatever the listing size
    for chunk in chunks(sorted(n for n in listing if not archive.is_temp_name(n)), 1000):
        rows = {r["file_name"]: r for r in db.files(names=chunk, columns=PLAN_COLUMNS)}
        for file_name in chunk:
            r = rows.get(file_name)
            if not in_share(None if r is None else r["file_number"], branches, branch):
                continue
            if r is None:
                out.unregistered.append(file_name)
            elif r["status"] in eligible and (dataset is None or r["dataset_id"] == dataset):
                out.tasks.append(_task(r, listing[file_name]))
            elif r["status"] != "available":
                out.skipped.append(skip_reason(r))
    if schedule == "dynamic":
        out.tasks.sort(key=lambda t: (-(t.size or 0), t.rel))
    for file_name in out.unregistered:
        log.warning("unregistered file in processing, left alone: %s", cfg.workspaces.processing / file_name)
    if any(" claimed by job " in x for x in out.skipped):
        jobs = {j["job_id"]: j for j in db.running_jobs()}
        out.skipped = [with_job(x, jobs) for x in out.skipped]
    return out


def _task(r: dict[str, object], size: int) -> FileTask:
    def text(key: str) -> str | None:
        v = r[key]
        return None if v is None else str(v)

    return FileTask(
        str(r["file_id"]),
        str(r["dataset_id"]),
        str(r["file_name"]),
        text("md5"),
        text("sha256"),
        size,
        text("transfer_checksum"),
        text("transfer_checksum_type"),
    )


class Pace:
    """How many files a job claims next: every worker's minimum queue at first, then CLAIM_AHEAD seconds
    of work at the rate seen so far (`process`'s Claims, `rekey` and `verify-archive` alike)."""

    def __init__(self) -> None:
        self.done_files = self.done_bytes = 0
        self.started: float | None = None

    def note(self, nbytes: int) -> None:
        """One file done (NBYTES read): the rate that sizes the next batches."""
        self.done_files += 1
        self.done_bytes += nbytes

    def batch(self, workers: int) -> tuple[int, int]:
        """Files and bytes for the next batch: every worker's minimum queue at first, then CLAIM_AHEAD
        seconds of work at the rate seen so far (at most MAX_FILES files)."""
        now = time.monotonic()
        if self.started is None:
            self.started = now
        files, nbytes = FIRST_FILES * max(workers, 1), FIRST_BYTES * max(workers, 1)
        seconds = now - self.started
        if self.done_files and seconds > 0:
            files = max(files, int(self.done_files / seconds * CLAIM_AHEAD))
            nbytes = max(nbytes, int(self.done_bytes / seconds * CLAIM_AHEAD))
        return min(files, MAX_FILES), nbytes


class Claims(Pace):
    """One job's claims over its candidates: `more` claims the next batch (one transaction per claim);
    `claimed` is every file this job holds or held (what `_finish` releases if not started)."""

    def __init__(
        self,
        db: Database,
        job_id: str,
        tasks: list[FileTask],
        retry_failed: bool = False,
        limit: int | None = None,
    ) -> None:
        self.db, self.job_id, self.retry_failed, self.limit = db, job_id, retry_failed, limit
        self.waiting: deque[FileTask] = deque(tasks)
        self.claimed: list[FileTask] = []
        self.taken = 0  # candidates another job claimed first: theirs, not an error
        super().__init__()

    def more(self, workers: int, db: Database | None = None) -> list[FileTask]:
        """Claim the next batch for WORKERS workers, in candidate order; [] once none is left for us.
        DB: the connection to claim on, when another thread owns ours (`Recorder.call` passes it)."""
        files, nbytes = self.batch(workers)
        return self._claim(files, nbytes, db or self.db)

    def all(self) -> list[FileTask]:
        """Claim every candidate left (the static schedule; `plan`), MAX_FILES per transaction."""
        out: list[FileTask] = []
        while batch := self._claim(MAX_FILES, 0):
            out += batch
        return out

    def _claim(self, files: int, nbytes: int, db: Database | None = None) -> list[FileTask]:
        """Up to FILES candidates (fewer once NBYTES are reached, if NBYTES; at least one), claimed;
        candidates others took meanwhile are replaced by the next ones."""
        out: list[FileTask] = []
        size = 0
        while self.waiting and len(out) < files and (not nbytes or size < nbytes or not out):
            room = files - len(out)
            if self.limit is not None:
                room = min(room, self.limit - len(self.claimed) - len(out))
            if room <= 0:
                break
            picked: list[FileTask] = []
            while self.waiting and len(picked) < room and (not nbytes or size < nbytes or not (out or picked)):
                t = self.waiting.popleft()
                picked.append(t)
                size += t.size or 0
            got = set((db or self.db).claim([t.file_id for t in picked], self.job_id, retry_failed=self.retry_failed))
            mine = [t for t in picked if t.file_id in got]
            self.taken += len(picked) - len(mine)
            size -= sum(t.size or 0 for t in picked if t.file_id not in got)
            out += mine
        self.claimed += out
        return out


def plan(
    db: Database,
    cfg: Config,
    job_id: str,
    branches: int = 1,
    branch: int = 1,
    retry_failed: bool = False,
    dataset: str | None = None,
    limit: int | None = None,
) -> Plan:
    """List the candidates and claim them all at once (MAX_FILES per transaction): the whole plan of a
    job that does not share its backlog (tests; the static schedule does the same through `Claims.all`)."""
    p = candidates(db, cfg, branches, branch, retry_failed, dataset, schedule="static")
    claims = Claims(db, job_id, p.tasks, retry_failed, limit)
    p.tasks = claims.all()
    return p
