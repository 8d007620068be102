"""Why a `process` job found nothing to do: where the registered files that are not archived stand.

A job that claims no file would otherwise print "0 file(s)" and leave the operator guessing. ``Backlog``
counts the unfinished files by what holds them up, each with the command that moves it on. The counting
(``Backlog.count``) is pure, from rows and folder listings, so it is tested without MPI or a database;
``Backlog.read`` takes them from the database and the workspace folders.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .config import Config
from .workspace import scan

ROW_COLUMNS = ("file_name", "status", "claimed_by")


class UnfinishedRows(Protocol):
    """What Backlog.read needs from the database layer (legampi.db.Database has it)."""

    def unfinished_files(self, columns: Sequence[str]) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class Backlog:
    """Registered files not yet archived, by what they wait for."""

    in_receiving: int = 0  # registered, still in receiving/: the transfer has not finished (or monitor not run)
    not_seen: int = 0  # registered, in neither receiving/ nor processing/
    failed: int = 0
    claimed: int = 0  # claimed by other jobs still alive (recovery released the dead ones' claims)
    claiming_jobs: int = 0
    ready: int = 0  # in processing/ and eligible, but outside this job's --dataset / --branch / --limit

    @classmethod
    def count(
        cls, rows: Iterable[Mapping[str, Any]], receiving: Iterable[str], processing: Iterable[str], job_id: str = ""
    ) -> Backlog:
        """ROWS: the unfinished files (file_name, status, claimed_by); RECEIVING, PROCESSING: the names in
        those folders; JOB_ID: this job, whose own claims do not count as another job's."""
        in_rec, in_proc = set(receiving), set(processing)
        n = dict.fromkeys(("in_receiving", "not_seen", "failed", "claimed", "ready"), 0)
        jobs = set()
        for r in rows:
            status, name = r["status"], r["file_name"]
            if status == "failed":
                n["failed"] += 1
            elif status == "processing":
                if r.get("claimed_by") != job_id:
                    n["claimed"] += 1
                    jobs.add(r.get("claimed_by"))
            elif status in ("pending", "received"):
                key = "ready" if name in in_proc else "in_receiving" if name in in_rec else "not_seen"
                n[key] += 1
        return cls(**n, claiming_jobs=len(jobs))

    @classmethod
    def read(cls, db: UnfinishedRows, cfg: Config, job_id: str = "") -> Backlog:
        """The backlog as the database and the receiving and processing folders show it now."""
        ws = cfg.workspaces
        rows = db.unfinished_files(ROW_COLUMNS)
        return cls.count(rows, (n for n, _ in scan(ws.receiving)), (n for n, _ in scan(ws.processing)), job_id)

    def lines(self) -> list[str]:
        """What `process` prints when it claimed nothing: each count with the command that moves it on."""
        out = ["  nothing to process in processing/; registered files not yet archived:"]
        out.append(
            f"  {self.in_receiving} still in receiving/ (registered, not yet moved): "
            "`legampi monitor` moves them once their transfer has finished"
        )
        out.append(
            f"  {self.not_seen} registered but not seen in receiving/ or processing/: "
            "transfer them (or check their names in the manifest: `legampi status`)"
        )
        out.append(
            f"  {self.failed} failed: `legampi status` lists the reasons; after fixing the cause, "
            "`legampi process --retry-failed`"
        )
        out.append(
            f"  {self.claimed} claimed by {self.claiming_jobs} other live job(s): they finish them "
            "(`legampi recover` releases the claims of jobs that died)"
        )
        if self.ready:
            out.append(
                f"  {self.ready} ready in processing/ but outside this job's --dataset/--branch/--limit: "
                "`legampi process` without them"
            )
        return out
