"""`rekey` and `verify-archive` claim each `available` file before they touch it (like `process`).

A file claimed by another live job is never touched: two rotations of one file cannot race on its header
and pending marker, and an audit never reads a file mid-rotation (nor does a rotation start under an
audit). The claim leaves the status `available` (legampi.db.archived), and a file that `process` holds is
`processing`, so neither command ever lists it. Claims are taken in batches as the workers need them
(`ArchivedClaims.more`, the executor's lazy source, sized like `process`'s by `claims.Pace`), so runs
started together each take a part; each row is read again once claimed (another job may have rotated the
file since the listing); a file another job holds is tried again at the end, and skipped and reported
only if held to the end (a rotation running alongside is waited for). The claims go back as results are
recorded and, all of them, when the job ends. A dead job's claims are freed at the start of the next
`rekey` or `verify-archive` and by `recover`.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .claims import MAX_FILES, Pace
from .db import Database, chunks, now
from .recovery import HEARTBEAT_INTERVAL, job_is_dead, pid_alive, slurm_job_gone

log = logging.getLogger("legampi.claims")

SKIPPED_EXIT = 5  # the run did everything it could, but other live jobs held some files: run it again later

Row = dict[str, Any]
POLL = 0.2  # seconds between looks at the files another rotation holds, while waiting for them
FREE_DEAD_EVERY = 5.0  # seconds between looks for dead holders while waiting


def wait_patience(flush_interval: float) -> float:
    """Seconds a run waits at its end for another rotation to let go of one more of the files it holds
    (it releases them as it records them, at least every flush_interval)."""
    return max(float(HEARTBEAT_INTERVAL), 4 * flush_interval)


def start_job(db: Database, command: str, ranks: int, make_id: Callable[[], str]) -> str:
    """Record a running job under a fresh id: ids are per second, so a second job started within the same
    second by the same process takes the next free second."""
    job_id = make_id()
    head, _, tail = job_id.rpartition("-")
    n = 0
    while db.job_exists(job_id) and tail.isdigit():
        n += 1
        job_id = f"{head}-{int(tail) + n}"
    db.job_start(job_id, command, socket.gethostname(), ranks)
    return job_id


def dead_job_check(db: Database, claim_timeout: int) -> Callable[[dict[str, Any]], bool]:
    """`recover`'s test of a dead job (pid gone on this host, Slurm gone, or heartbeat too old)."""
    host, cutoff, grace = socket.gethostname(), db.cutoff(claim_timeout), db.cutoff(2 * HEARTBEAT_INTERVAL)
    asked: dict[str, bool | None] = {}

    def slurm_gone(job_id: str) -> bool | None:
        if job_id not in asked:
            asked[job_id] = slurm_job_gone(job_id)
        return asked[job_id]

    return lambda j: job_is_dead(j, host, pid_alive, cutoff, slurm_gone, grace)


def free_dead_claims(db: Database, claim_timeout: int) -> list[str]:
    """Mark jobs whose processes are gone `died` and free their claims on `available` files."""
    dead = dead_job_check(db, claim_timeout)
    for j in db.running_jobs():
        if dead(j):
            db.mark_jobs_died([j["job_id"]])
    freed = db.release_dead_archived(claim_timeout, dead)
    for line in freed:
        log.warning("freed the claim of a dead job: %s", line)
    return freed


def holder_text(h: Row | None) -> str:
    """Who holds a file, as the operator reads it: `claimed by job X (rekey, host, pid N)`."""
    if h is None:
        return "no longer available (its status changed meanwhile)"
    if h.get("command") is None:
        return f"claimed by job {h['claimed_by']} (unknown job, since {h['claimed_at']})"
    return f"claimed by job {h['claimed_by']} ({h['command']}, {h['host']}, pid {h['pid']})"


@dataclass
class Claimed:
    rows: list[Row] = field(default_factory=list)  # held by this job, read again after the claim
    dropped: list[Row] = field(default_factory=list)  # claimed, then found not to need the work (released)
    skipped: list[tuple[Row, str]] = field(default_factory=list)  # (the listed row, who holds it)


def claim_in_batches(
    db: Database,
    job_id: str,
    rows: Sequence[Row],
    batch: int,
    keep: Callable[[Row], bool] | None = None,
    want: int | None = None,
) -> Claimed:
    """Claim the files of ROWS for JOB_ID, BATCH per transaction, until WANT are held (None: all). A claimed
    row that KEEP refuses (read again: another job finished it meanwhile) is released at once."""
    out = Claimed()
    todo = list(rows)
    while todo and (want is None or len(out.rows) < want):
        n = max(1, min(batch, want - len(out.rows))) if want is not None else max(1, batch)
        chunk, todo = todo[:n], todo[n:]
        _claim_chunk(db, job_id, chunk, keep, out)
    return out


def _claim_chunk(db: Database, job_id: str, chunk: list[Row], keep: Callable[[Row], bool] | None, out: Claimed) -> None:
    ids = [r["file_id"] for r in chunk]
    got = set(db.claim_archived(ids, job_id))
    missed = [i for i in ids if i not in got]
    holders = {h["file_id"]: h for h in db.archived_claims(missed)} if missed else {}
    retry = [i for i in missed if i not in holders]  # released between our claim and our look: once more
    if retry:
        again = set(db.claim_archived(retry, job_id))
        got |= again
        holders |= {h["file_id"]: h for h in db.archived_claims([i for i in retry if i not in again])}
    fresh = {r["file_id"]: r for r in db.files(file_ids=sorted(got))} if got else {}
    drop = []
    for r in chunk:
        fid = r["file_id"]
        if fid not in got:
            out.skipped.append((r, holder_text(holders.get(fid))))
        elif keep is not None and not keep(fresh[fid]):
            out.dropped.append(fresh[fid])
            drop.append(fid)
        else:
            out.rows.append(fresh[fid])
    if drop:
        db.release_archived(drop, job_id)


def skipped_lines(skipped: Sequence[tuple[Row, str]], where: Callable[[Row], str]) -> list[str]:
    """One report line per skipped file, `  SKIPPED <where>: claimed by job X (...)`."""
    return [f"  SKIPPED {where(r)}: {why}" for r, why in skipped]


class ClaimBook:
    """This job's claims on the way back: released in batches as files finish (so another job can take
    them), all of them at the end; and the job's heartbeat, which keeps its claims live."""

    def __init__(self, db: Database, job_id: str, batch: int, interval: float) -> None:
        self.db, self.job_id, self.batch, self.interval = db, job_id, max(1, batch), interval
        self.pending: list[str] = []
        self.flushed = self.beat = time.monotonic()

    def done(self, file_ids: Sequence[str]) -> None:
        self.pending += [f for f in file_ids if f]
        if len(self.pending) >= self.batch:
            self.flush()
        self.tick()  # results may arrive back to back, without the executor ever idling

    def flush(self) -> None:
        for chunk in chunks(self.pending, 500):
            self.db.release_archived(chunk, self.job_id)
        self.pending = []
        self.flushed = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        if self.pending and now - self.flushed >= self.interval:
            self.flush()
        if now - self.beat >= HEARTBEAT_INTERVAL:
            self.db.job_heartbeat(self.job_id)
            self.beat = now

    def close(self) -> None:
        """Give back every claim this job still holds (also those of files never started)."""
        self.pending = []
        self.db.release_archived(None, self.job_id)


class ArchivedClaims(Pace):
    """One job's claims over its candidate ROWS, a batch at a time as its workers need them (`more`, the
    executor's lazy source; sized by `claims.Pace` like `process`, at most MOST files per transaction).

    A candidate another job holds is set aside (`later`) and tried again once the candidates run out and
    at the end (`finish`): only a file never ours by then is skipped. A file a run of SHARED's command
    working alongside ours holds (claimed after we started) is its part, not ours and not skipped
    (`verify-archive`: the other audit reads it).
    Each claimed row is read again; one KEEP refuses (another job finished it meanwhile) goes back at once.
    """

    def __init__(
        self,
        db: Database,
        job_id: str,
        rows: Sequence[Row],
        *,
        keep: Callable[[Row], bool] | None = None,
        limit: int | None = None,
        most: int = MAX_FILES,
        shared: str | None = None,
        size: Callable[[Row], int] = lambda r: int(r["archive_size"] or r["size"] or 0),
    ) -> None:
        super().__init__()
        self.db, self.job_id, self.keep, self.limit, self.most = db, job_id, keep, limit, max(1, most)
        self.shared, self.size, self.since = shared, size, now()
        self.waiting: deque[Row] = deque(rows)
        self.later: dict[str, Row] = {}  # file id -> listed row: another job held it when we tried
        self.holders: dict[str, Row] = {}  # file id -> its holder when we last tried
        self.rows: list[Row] = []  # claimed and kept (read again): ours to do
        self.dropped: list[Row] = []  # claimed, then found not to need the work (released at once)
        self.theirs: list[tuple[Row, str]] = []  # held by a job of SHARED's command: its part
        self.skipped: list[tuple[Row, str]] = []  # never ours by the end (`finish`), with who held it

    def more(self, workers: int) -> list[Row]:
        """The next batch for WORKERS workers, claimed; then the files set aside that are free now; []
        once nothing more can be ours during the run."""
        files, nbytes = self.batch(workers)
        out = self._take(min(files, self.most), nbytes)
        if not out and not self.waiting and self.later:
            out = self._retry()
        return out

    def _room(self, n: int) -> int:
        return n if self.limit is None else min(n, self.limit - len(self.rows))

    def _take(self, files: int, nbytes: int) -> list[Row]:
        """Up to FILES candidates (fewer once NBYTES are reached; at least one), claimed; those others
        hold are set aside and replaced by the next ones."""
        out: list[Row] = []
        while self.waiting and len(out) < files and (sum(map(self.size, out)) < nbytes or not out):
            room, size = self._room(files - len(out)), sum(map(self.size, out))
            picked: list[Row] = []
            while self.waiting and len(picked) < room and (size < nbytes or not (out or picked)):
                picked.append(self.waiting.popleft())
                size += self.size(picked[-1])
            if not picked:
                break
            out += self._claim(picked)
        return out

    def _retry(self) -> list[Row]:
        rows = list(self.later.values())[: self._room(len(self.later))]
        return self._claim(rows) if rows else []

    def _claim(self, rows: list[Row]) -> list[Row]:
        """Claim ROWS' files: ours read again (KEEP), the others set aside with their holders."""
        ids = [r["file_id"] for r in rows]
        got = set(self.db.claim_archived(ids, self.job_id))
        missed = [r for r in rows if r["file_id"] not in got]
        holders = {h["file_id"]: h for h in self.db.archived_claims([r["file_id"] for r in missed])} if missed else {}
        for r in missed:
            h = holders.get(r["file_id"])
            if self._alongside(h, self.shared):
                self.later.pop(r["file_id"], None)
                self.theirs.append((r, holder_text(h)))
            else:
                self.later[r["file_id"]] = r
                if h is not None:
                    self.holders[r["file_id"]] = h
                else:  # released since our claim, or no longer available: the next try tells
                    self.holders.pop(r["file_id"], None)
        fresh = {r["file_id"]: r for r in self.db.files(file_ids=sorted(got))} if got else {}
        out: list[Row] = []
        drop: list[str] = []
        for fid in ids:
            if fid in got:
                self.later.pop(fid, None)
                ok = self.keep is None or self.keep(fresh[fid])
                (out if ok else self.dropped).append(fresh[fid])
                drop += [] if ok else [fid]
        if drop:
            self.db.release_archived(drop, self.job_id)
        self.rows += out
        return out

    def finish(
        self,
        wait_for: str | None = None,
        patience: float = 0.0,
        tick: Callable[[], None] = lambda: None,
        claim_timeout: int = 600,
    ) -> list[Row]:
        """After the run, called until it gives []: the files set aside, tried again; those a live job of
        WAIT_FOR's command claimed after this job started (a run alongside ours) are waited for while it
        lets one go at least every PATIENCE seconds (a holder found dead, by CLAIM_TIMEOUT too, is freed).
        Returns the rows claimed now, to do and give back before the next call (so that we hold nothing
        while we wait, and nobody waits for us); once it gives [], the rest are skipped."""
        if self._room(1) <= 0:  # LIMIT files taken: those set aside are not wanted (nor skipped)
            self.later.clear()
        deadline = freed = time.monotonic()
        deadline += patience
        while True:
            before = len(self.later)
            if out := self._retry():
                return out
            if len(self.later) < before:  # some were let go (and found done): the other run goes on
                deadline = time.monotonic() + patience
            if not (self.later and self._waited(wait_for) and time.monotonic() < deadline):
                break
            time.sleep(POLL)
            tick()
            if time.monotonic() - freed >= FREE_DEAD_EVERY:  # a holder that died: its claims freed
                freed = time.monotonic()
                free_dead_claims(self.db, claim_timeout)
        self.skipped = [(r, holder_text(self.holders.get(fid))) for fid, r in self.later.items()]
        return []

    def _alongside(self, h: Row | None, command: str | None) -> bool:
        """Is H's claim one of a run of COMMAND working alongside ours (a live job that claimed it after
        this job started)? One that held it from before is no part of our work: its files are skipped."""
        return (
            h is not None
            and command is not None
            and h["command"] == command
            and h["ended_at"] is None
            and str(h["claimed_at"]) >= self.since
        )

    def _waited(self, command: str | None) -> bool:
        return any(self._alongside(self.holders.get(fid), command) for fid in self.later)
