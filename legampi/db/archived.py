"""Claims on `available` files: `rekey` and `verify-archive` take an archived file before they touch it.

Such a claim sets only ``claimed_by``/``claimed_at``: the status stays `available` (the file is archived
and recorded whatever the job does), and `process`, which claims only pending/received/failed files, never
takes it. A claim of a job that died is freed here (status unchanged) by `recover` and by the next
`rekey` or `verify-archive`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .connection import chunks, marks, now
from .files import FilesMixin
from .jobs import JobsMixin
from .rows import Event

_HOLDERS = (
    "SELECT f.file_id, f.dataset_id, f.file_name, f.archive_path, f.claimed_by, f.claimed_at, j.command, "
    "j.host, j.pid, j.heartbeat_at, j.ended_at FROM file f LEFT JOIN job j ON j.job_id = f.claimed_by "
    "WHERE f.claimed_by IS NOT NULL AND "
)


class ArchivedClaimsMixin(JobsMixin, FilesMixin):
    """Claims, holders and releases of `available` files."""

    def _by_id_available(self, column: str = "status") -> str:
        """`status = 'available'` for a WHERE that also lists file ids: SQLite would otherwise walk the
        status index (most of an archive) instead of looking up each id (`+` keeps it off that index)."""
        return f"+{column} = 'available'" if self.backend == "sqlite" else f"{column} = 'available'"

    def claim_archived(self, file_ids: Sequence[str], job_id: str) -> list[str]:
        """Claim the `available` files nobody holds for JOB_ID (status unchanged); returns those it got."""
        ts, got = now(), []
        with self.transaction():
            for chunk in chunks(list(file_ids), 500):
                cur = self.execute(
                    f"UPDATE file SET claimed_by = ?, claimed_at = ? WHERE file_id IN ({marks(len(chunk))}) "
                    f"AND {self._by_id_available()} AND claimed_by IS NULL RETURNING file_id",
                    [job_id, ts, *chunk],
                )
                got += [r[0] for r in cur.fetchall()]
            self.job_heartbeat(job_id)
        return got

    def release_archived(self, file_ids: Sequence[str] | None, job_id: str) -> int:
        """Give back JOB_ID's claims on `available` files (all of them when FILE_IDS is None)."""
        n = 0
        with self.transaction():
            if file_ids is None:
                cur = self.execute(
                    "UPDATE file SET claimed_by = NULL, claimed_at = NULL WHERE claimed_by = ? "
                    "AND status = 'available'",
                    (job_id,),
                )
                return cur.rowcount
            for chunk in chunks(list(file_ids), 500):
                cur = self.execute(
                    f"UPDATE file SET claimed_by = NULL, claimed_at = NULL WHERE file_id IN ({marks(len(chunk))}) "
                    f"AND claimed_by = ? AND {self._by_id_available()}",
                    [*chunk, job_id],
                )
                n += cur.rowcount
        return n

    def archived_claims(self, file_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Claimed `available` files with their holder (command, host, pid, heartbeat; None: no such job)."""
        if file_ids is None:
            return self.query(_HOLDERS + "f.status = 'available' ORDER BY f.file_name")
        out: list[dict[str, Any]] = []
        for chunk in chunks(list(file_ids), 500):
            sql = _HOLDERS + f"{self._by_id_available('f.status')} AND f.file_id IN ({marks(len(chunk))})"
            out += self.query(sql, list(chunk))
        return out

    def release_dead_archived(self, claim_timeout: int, dead_job: Callable[[dict[str, Any]], bool]) -> list[str]:
        """Free the claims on `available` files of jobs that ended or are dead by DEAD_JOB (of an unknown job:
        older than CLAIM_TIMEOUT); the status stays. Returns one line per freed claim for the report."""
        cutoff = self.cutoff(claim_timeout)
        freed: list[str] = []
        with self.transaction():
            ts = now()
            for r in self.archived_claims():
                if r["host"] is None:
                    dead = (r["claimed_at"] or "") < cutoff
                else:
                    dead = r["ended_at"] is not None or dead_job(r)
                if not dead:
                    continue
                cur = self.execute(
                    "UPDATE file SET claimed_by = NULL, claimed_at = NULL WHERE file_id = ? AND claimed_by = ? "
                    f"AND {self._by_id_available()}",
                    (r["file_id"], r["claimed_by"]),
                )
                if cur.rowcount:
                    job = f"job {r['claimed_by']}, {r['command'] or 'unknown job'}"
                    why = f"claim of a dead job ({job})"
                    self.add_events([Event(r["file_id"], r["dataset_id"], "released", "available", why)], None, ts)
                    freed.append(f"{r['file_name']} ({job}; still available)")
        return freed

    def job_exists(self, job_id: str) -> bool:
        """Is there a job row with this id (a new job's id must be unused)?"""
        return bool(self.query("SELECT 1 AS x FROM job WHERE job_id = ?", (job_id,)))
