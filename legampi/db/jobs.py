"""Jobs and claims: a job's row and heartbeat, the claims that make a file `processing`, and what
recovery needs to tell a dead job's claims from a live one's."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from .connection import Connection, chunks, marks, now
from .rows import JOB_COLUMNS, Event, JobRow


class JobsMixin(Connection):
    """Queries over the job and job_rank tables, and claims on files."""

    def job_start(self, job_id: str, command: str, host: str, ranks: int) -> None:
        """Record a starting job (state `running`): its claims are live while its heartbeat is."""
        ts = now()
        with self.transaction():
            self.insert_many(
                "job",
                ("job_id", "command", "host", "pid", "ranks", "started_at", "heartbeat_at"),
                [(job_id, command, host, os.getpid(), ranks, ts, ts)],
            )

    def job_heartbeat(self, job_id: str) -> None:
        """The job is alive now (recovery tells dead jobs by a stale heartbeat)."""
        self.execute("UPDATE job SET heartbeat_at = ? WHERE job_id = ?", (now(), job_id))

    def job_end(
        self, job_id: str, exit_status: int, summary: str, ranks: Sequence[tuple[int, str, int, int, float]] = ()
    ) -> None:
        """Record a job's end, its exit status and summary, and each rank's (rank, host, files, bytes,
        seconds)."""
        with self.transaction():
            self.execute(
                "UPDATE job SET ended_at = ?, exit_status = ?, summary = ?, state = 'ended' WHERE job_id = ?",
                (now(), exit_status, summary, job_id),
            )
            self.insert_many(
                "job_rank", ("job_id", "rank", "host", "files", "bytes", "seconds"), [(job_id, *r) for r in ranks]
            )

    def jobs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The LIMIT most recent jobs, newest first (the report's runs; no state column)."""
        return self.query(
            "SELECT job_id, command, host, pid, ranks, started_at, heartbeat_at, ended_at, "
            "exit_status, summary FROM job ORDER BY started_at DESC LIMIT ?",
            (limit,),
        )

    def job_rows(self, limit: int = 20) -> list[JobRow]:
        """The LIMIT most recent jobs, newest first, as typed rows with their state."""
        sql = f"SELECT {','.join(JOB_COLUMNS)} FROM job ORDER BY started_at DESC LIMIT ?"
        return [JobRow.from_dict(r) for r in self.query(sql, (limit,))]

    def job_ranks(self, job_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Per-rank throughput of the given jobs."""
        if not job_ids:
            return []
        return self.query(
            "SELECT job_id, rank, host, files, bytes, seconds FROM job_rank WHERE job_id IN "
            f"({marks(len(job_ids))}) ORDER BY job_id, rank",
            list(job_ids),
        )

    def job_failures(self, job_ids: Sequence[str]) -> dict[str, int]:
        """How many files each of the given jobs recorded as failed."""
        if not job_ids:
            return {}
        rows = self.query(
            "SELECT job_id, count(*) AS n FROM file_event WHERE event = 'failed' AND job_id IN "
            f"({marks(len(job_ids))}) GROUP BY job_id",
            list(job_ids),
        )
        return {r["job_id"]: int(r["n"]) for r in rows}

    def claim(self, file_ids: Sequence[str], job_id: str, retry_failed: bool = False) -> list[str]:
        """Atomically mark files as `processing` for this job; returns those it got (no double claims)."""
        allowed = ["pending", "received"] + (["failed"] if retry_failed else [])
        ts = now()
        got: list[str] = []
        with self.transaction():
            for chunk in chunks(list(file_ids), 500):
                cur = self.execute(
                    f"UPDATE file SET status = 'processing', claimed_by = ?, claimed_at = ?, updated_at = ?, "
                    f"attempts = attempts + 1 WHERE file_id IN ({marks(len(chunk))}) AND status IN "
                    f"({marks(len(allowed))}) RETURNING file_id, dataset_id",
                    [job_id, ts, ts, *chunk, *allowed],
                )
                rows = cur.fetchall()
                got += [r[0] for r in rows]
                self.add_events([Event(r[0], r[1], "claimed", "processing") for r in rows], job_id, ts)
            self.job_heartbeat(job_id)
        return got

    def release(self, file_ids: Sequence[str], job_id: str | None, reason: str) -> int:
        """Give claims back (status `received`) so a later job takes them; only this job's claims."""
        ts = now()
        n = 0
        with self.transaction():
            for chunk in chunks(list(file_ids), 500):
                where = f"file_id IN ({marks(len(chunk))}) AND status = 'processing'"
                params: list[Any] = list(chunk)
                if job_id is not None:
                    where += " AND claimed_by = ?"
                    params.append(job_id)
                rows = self.query(f"SELECT file_id, dataset_id, claimed_by FROM file WHERE {where}", params)
                self.execute(
                    f"UPDATE file SET status = 'received', claimed_by = NULL, claimed_at = NULL, "
                    f"updated_at = ? WHERE {where}",
                    [ts, *params],
                )
                self.add_events(
                    [
                        Event(
                            r["file_id"],
                            r["dataset_id"],
                            "released",
                            "received",
                            f"{reason} (claimed by {r['claimed_by']})",
                        )
                        for r in rows
                    ],
                    job_id,
                    ts,
                )
                n += len(rows)
        return n

    def running_jobs(self) -> list[dict[str, Any]]:
        """Jobs that have not ended (alive, or dead without anybody having noticed yet)."""
        return self.query("SELECT job_id, command, host, pid, heartbeat_at FROM job WHERE ended_at IS NULL")

    def mark_jobs_died(self, job_ids: Sequence[str]) -> list[str]:
        """End jobs whose processes are gone with state `died`; returns those this call changed."""
        ts, done = now(), []
        with self.transaction():
            for job_id in job_ids:
                cur = self.execute(
                    "UPDATE job SET state = 'died', ended_at = ? WHERE job_id = ? AND ended_at IS NULL", (ts, job_id)
                )
                if cur.rowcount:
                    done.append(job_id)
        return done

    def stale_claims(self, claim_timeout: int, dead_job: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Claims whose job has ended or is dead by `dead_job`, and claims of unknown jobs older than the timeout."""
        cutoff = self.cutoff(claim_timeout)
        rows = self.query(
            "SELECT f.file_id, f.dataset_id, f.file_name, f.claimed_by, f.claimed_at, j.host, j.pid, j.ended_at, "
            "j.heartbeat_at FROM file f LEFT JOIN job j ON j.job_id = f.claimed_by WHERE f.status = 'processing'"
        )
        stale = []
        for r in rows:
            if r["host"] is None:
                dead = (r["claimed_at"] or "") < cutoff
            else:
                dead = r["ended_at"] is not None or dead_job(r)
            if dead:
                stale.append(r)
        return stale
