"""The tracking database: the only module that speaks SQL.

SQLite (standard library) is the embedded default, PostgreSQL (psycopg2) the production backend. SQL is
written once with ``?`` placeholders and translated for psycopg2; every value is a bound parameter.
Timestamps are written as ISO-8601 UTC strings (PostgreSQL casts them to TIMESTAMPTZ) and read back as
ISO strings from both backends, so callers never see backend differences.

The database is the checkpoint of the whole system: a file is ``available`` only after its archived copy
was verified and this module committed the row; everything else can be redone.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import DatabaseConfig
from .status import DATASET_DATES, STATUSES

log = logging.getLogger("legampi.db")

SCHEMA_VERSION = 2  # sql/<backend>.sql creates it; sql/<backend>-NNN.sql upgrades NNN-1 to NNN in place

FILE_COLUMNS = (
    "file_id",
    "dataset_id",
    "file_name",
    "size",
    "md5",
    "sha256",
    "status",
    "archive_path",
    "archive_checksum",
    "archive_checksum_type",
    "archive_key",
    "plain_size",
    "archive_size",
    "error",
    "attempts",
    "claimed_by",
    "claimed_at",
    "created_at",
    "updated_at",
    "archive_name",
    "transfer_checksum",
    "transfer_checksum_type",
)
# What `register --amend` may correct (expected values from the manifest), in the order events list them.
AMENDABLE = ("md5", "sha256", "transfer_checksum", "transfer_checksum_type", "size")
DATASET_COLUMNS = ("dataset_id", "n_files", "n_bytes") + DATASET_DATES


@dataclass
class Registration:
    """What `register` (or `register --amend`) did with a manifest."""

    added: int = 0
    unchanged: int = 0
    amended: int = 0
    retried: list[str] = field(default_factory=list)  # failed files back to `received`
    stuck: list[str] = field(default_factory=list)  # failed, checksum corrected, source not in processing


class DatabaseError(Exception):
    """The database cannot be reached or used; the message never contains a password."""


def now() -> str:
    """The current UTC time as the ISO-8601 string stored in every timestamp column."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _iso(value: Any) -> Any:
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.astimezone(_dt.timezone.utc).isoformat(timespec="microseconds")
    return value


def schema_file(backend: str, step: int | None = None) -> Path:
    """Locate sql/<backend>.sql (or the migration to version STEP, sql/<backend>-NNN.sql) in the source
    tree or in an installed share/legampi/sql."""
    name = f"{backend}.sql" if step is None else f"{backend}-{step:03d}.sql"
    candidates = [
        Path(__file__).resolve().parent.parent / "sql" / name,
        Path(sys.prefix) / "share" / "legampi" / "sql" / name,
    ]
    for c in candidates:
        if c.is_file():
            return c
    raise DatabaseError(f"schema file {name} not found (looked in {', '.join(map(str, candidates))})")


def chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    """Slices of at most N items: statements stay under the backends' parameter limits."""
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


@dataclass
class Event:
    file_id: str | None
    dataset_id: str | None
    event: str
    status: str | None = None
    details: str | None = None


class Database:
    """A connection to the tracking database with the queries legampi needs."""

    def __init__(self, conn: Any, backend: str, label: str):
        self.conn, self.backend, self.label = conn, backend, label
        self._in_tx = False

    # ------------------------------------------------------------------ connection
    @classmethod
    def connect(cls, cfg: DatabaseConfig) -> Database:
        if cfg.backend == "sqlite":
            path = cfg.url[len("sqlite:///") :]
            try:
                conn = sqlite3.connect(path, timeout=120, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as exc:
                raise DatabaseError(f"cannot open SQLite database {path}: {exc}") from None
            return cls(conn, "sqlite", path)
        import psycopg2  # imported lazily: the embedded default does not need it

        kwargs: dict[str, Any] = {"dsn": cfg.url, "connect_timeout": 10}
        if cfg.password is not None:
            kwargs["password"] = cfg.password.reveal()
        label = cfg.url
        try:
            conn = psycopg2.connect(**kwargs)
        except psycopg2.Error as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if cfg.password is not None:
                msg = msg.replace(cfg.password.reveal(), "<hidden>")
            raise DatabaseError(f"cannot connect to PostgreSQL {label}: {msg}") from None
        conn.autocommit = True
        return cls(conn, "postgresql", label)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a dead connection has nothing left to report
            self.conn.close()

    def _sql(self, sql: str) -> str:
        """qmark to psycopg2's format style; a literal ``%`` (``LIKE '%x'``) must be doubled first."""
        return sql.replace("%", "%%").replace("?", "%s") if self.backend == "postgresql" else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        cur = self.conn.cursor()
        try:
            cur.execute(self._sql(sql), tuple(params))
        except Exception as exc:
            raise self._wrap(exc) from exc
        return cur

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [{k: _iso(v) for k, v in zip(names, row, strict=True)} for row in cur.fetchall()]

    def _wrap(self, exc: Exception) -> Exception:
        if isinstance(exc, sqlite3.Error):
            return DatabaseError(f"SQLite {self.label}: {exc}")
        mod = type(exc).__module__
        if mod.startswith("psycopg2"):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return DatabaseError(f"PostgreSQL {self.label}: {first}")
        return exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Database]:
        """One atomic unit. SQLite takes the write lock at once so concurrent jobs serialise cleanly."""
        if self._in_tx:
            yield self
            return
        self.execute("BEGIN IMMEDIATE" if self.backend == "sqlite" else "BEGIN")
        self._in_tx = True
        try:
            yield self
        except BaseException:
            self._in_tx = False
            with contextlib.suppress(Exception):  # the original error is what the caller must see
                self.execute("ROLLBACK")
            raise
        self._in_tx = False
        self.execute("COMMIT")

    # ------------------------------------------------------------------ schema
    def schema_version(self) -> int | None:
        try:
            rows = self.query("SELECT max(version) AS v FROM schema_version")
        except DatabaseError:
            if self.backend == "postgresql":
                with contextlib.suppress(Exception):
                    self.conn.rollback()
            return None
        return rows[0]["v"] if rows else None

    def init_schema(self, extensions: Sequence[str] = ()) -> tuple[int | None, int]:
        """Create the schema, or upgrade an older one in place; returns (version before, version after).

        An empty database gets sql/<backend>.sql. An older one gets each numbered migration after its
        recorded version (SQLite has no ADD COLUMN IF NOT EXISTS, so the version decides what runs), all
        in one transaction: a failed upgrade leaves the database as it was. EXTENSIONS (the configured
        input extensions) map existing file names to the archive names version 2 records.
        """
        before = self.schema_version()
        with self.transaction():
            if before is None:
                for stmt in _split_sql(schema_file(self.backend).read_text(encoding="utf-8")):
                    self.execute(stmt)
                return before, SCHEMA_VERSION
            if self.backend == "postgresql":  # a concurrent init-db waits here, then finds the new version
                self.execute("LOCK TABLE schema_version IN SHARE ROW EXCLUSIVE MODE")
            current = self.query("SELECT max(version) AS v FROM schema_version")[0]["v"] or 0
            if current > SCHEMA_VERSION:
                raise DatabaseError(
                    f"{self.label}: schema version {current} is newer than this legampi's {SCHEMA_VERSION}"
                )
            for step in range(current + 1, SCHEMA_VERSION + 1):
                for stmt in _split_sql(schema_file(self.backend, step).read_text(encoding="utf-8")):
                    self.execute(stmt)
                if step == 2:
                    self._fill_archive_names(extensions)
        return before, SCHEMA_VERSION

    def _fill_archive_names(self, extensions: Sequence[str]) -> None:
        """Record each registered file's archive name (upgrade to version 2), in pages of file ids so
        memory stays bounded; a name that maps to no archive path stays NULL and is reported."""
        from .archive import archive_name
        from .formats import IngestError

        last = ""
        while True:
            rows = self.query(
                "SELECT file_id, file_name FROM file WHERE file_id > ? ORDER BY file_id LIMIT 1000", (last,)
            )
            if not rows:
                return
            last = rows[-1]["file_id"]
            pairs: list[Any] = []
            for r in rows:
                try:
                    pairs += [r["file_id"], archive_name(r["file_name"], tuple(extensions))]
                except IngestError as e:
                    log.warning("file %s: no archive name recorded: %s", r["file_id"], e.message)
            for part in chunks(pairs, 1000):
                self.execute(
                    "UPDATE file SET archive_name = CAST(v.column2 AS TEXT) FROM (VALUES "
                    + ",".join(["(?,?)"] * (len(part) // 2))
                    + ") AS v WHERE file.file_id = v.column1",
                    part,
                )

    def require_schema(self) -> None:
        v = self.schema_version()
        if v is None:
            raise DatabaseError(f"{self.label}: no legampi schema; run `legampi init-db` first")
        if v != SCHEMA_VERSION:
            raise DatabaseError(
                f"{self.label}: schema version {v}, this legampi needs {SCHEMA_VERSION}; run `legampi init-db`"
            )

    # ------------------------------------------------------------------ generic bulk helpers
    def insert_many(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], conflict: str = ""
    ) -> None:
        """Multi-row INSERT: one statement for many rows (no per-row round trip)."""
        if not rows:
            return
        per = max(1, 30000 // max(1, len(columns)))
        ph = "(" + ",".join("?" * len(columns)) + ")"
        for chunk in chunks(list(rows), min(per, 500)):
            sql = (
                f"INSERT INTO {table} ({','.join(columns)}) VALUES "
                + ",".join([ph] * len(chunk))
                + (f" {conflict}" if conflict else "")
            )
            self.execute(sql, [v for row in chunk for v in row])

    def add_events(self, events: Iterable[Event], job_id: str | None = None, at: str | None = None) -> None:
        at = at or now()
        self.insert_many(
            "file_event",
            ("file_id", "dataset_id", "event", "status", "details", "job_id", "at"),
            [(e.file_id, e.dataset_id, e.event, e.status, e.details, job_id, at) for e in events],
        )

    # ------------------------------------------------------------------ files and datasets
    def files(
        self,
        dataset_id: str | None = None,
        status: str | None = None,
        names: Sequence[str] | None = None,
        file_ids: Sequence[str] | None = None,
        columns: Sequence[str] = FILE_COLUMNS,
    ) -> list[dict[str, Any]]:
        """File rows, optionally only some COLUMNS (rank 0 holds one row per file: keep them small)."""
        unknown = set(columns) - set(FILE_COLUMNS)
        if unknown:
            raise ValueError(f"unknown file columns {sorted(unknown)}")
        where, params = [], []
        if dataset_id is not None:
            where.append("dataset_id = ?")
            params.append(dataset_id)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        base = f"SELECT {','.join(columns)} FROM file"
        if names is None and file_ids is None:
            sql = base + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY dataset_id, file_name"
            return self.query(sql, params)
        key, values = ("file_name", names) if names is not None else ("file_id", file_ids)
        out: list[dict[str, Any]] = []
        for chunk in chunks(list(values or ()), 500):
            cond = where + [f"{key} IN ({','.join('?' * len(chunk))})"]
            out += self.query(base + " WHERE " + " AND ".join(cond), params + list(chunk))
        return out

    def unfinished_files(self, columns: Sequence[str] = FILE_COLUMNS) -> list[dict[str, Any]]:
        """Files not yet `available`: what recovery has to look at."""
        if set(columns) - set(FILE_COLUMNS):
            raise ValueError(f"unknown file columns {sorted(set(columns) - set(FILE_COLUMNS))}")
        return self.query(f"SELECT {','.join(columns)} FROM file WHERE status <> 'available'")

    def file_names(self) -> list[str]:
        """Every registered file name, sorted: the stable listing job-array shares are taken from."""
        return [r["file_name"] for r in self.query("SELECT file_name FROM file ORDER BY file_name")]

    def datasets(self, dataset_id: str | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT {','.join(DATASET_COLUMNS)} FROM dataset_log"
        if dataset_id is not None:
            return self.query(sql + " WHERE dataset_id = ?", (dataset_id,))
        return self.query(sql + " ORDER BY dataset_id")

    def status_counts(self, dataset_id: str | None = None) -> list[dict[str, Any]]:
        sql = (
            "SELECT dataset_id, status, count(*) AS files, coalesce(sum(size), 0) AS bytes FROM file"
            + (" WHERE dataset_id = ?" if dataset_id else "")
            + " GROUP BY dataset_id, status"
        )
        return self.query(sql, (dataset_id,) if dataset_id else ())

    def events(
        self, file_id: str | None = None, dataset_id: str | None = None, event: str | None = None
    ) -> list[dict[str, Any]]:
        where, params = [], []
        for col, val in (("file_id", file_id), ("dataset_id", dataset_id), ("event", event)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        sql = "SELECT id, file_id, dataset_id, event, status, details, job_id, at FROM file_event"
        return self.query(sql + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id", params)

    def archived_timeline(self, dataset_id: str | None = None) -> list[dict[str, Any]]:
        """When each file became available, with its size: the report's timeline."""
        sql = (
            "SELECT e.at, coalesce(f.size, 0) AS bytes, e.dataset_id FROM file_event e JOIN file f "
            "ON f.file_id = e.file_id WHERE e.event = 'available'"
        )
        if dataset_id is not None:
            return self.query(sql + " AND e.dataset_id = ? ORDER BY e.at", (dataset_id,))
        return self.query(sql + " ORDER BY e.at")

    def refresh_dataset_totals(self, dataset_ids: Iterable[str]) -> None:
        """n_files/n_bytes are derived from the file table so they are always the true totals."""
        for ds in sorted(set(dataset_ids)):
            self.execute(
                "UPDATE dataset_log SET n_files = (SELECT count(*) FROM file WHERE dataset_id = ?), "
                "n_bytes = (SELECT coalesce(sum(size), 0) FROM file WHERE dataset_id = ?) "
                "WHERE dataset_id = ?",
                (ds, ds, ds),
            )

    def stamp_dataset(
        self,
        dataset_ids: Iterable[str],
        column: str,
        at: str | None = None,
        only_if_null: bool = True,
        when_no_status_in: Sequence[str] = (),
    ) -> list[str]:
        """Set one of the four dataset dates; optionally only once every file has left the given statuses."""
        if column not in DATASET_DATES:
            raise ValueError(f"unknown dataset date {column!r}")
        at = at or now()
        stamped = []
        for ds in sorted(set(dataset_ids)):
            sql = f"UPDATE dataset_log SET {column} = ? WHERE dataset_id = ?"
            params: list[Any] = [at, ds]
            if only_if_null:
                sql += f" AND {column} IS NULL"
            if when_no_status_in:
                sql += (
                    f" AND NOT EXISTS (SELECT 1 FROM file WHERE dataset_id = ? AND status IN "
                    f"({','.join('?' * len(when_no_status_in))}))"
                )
                params += [ds, *when_no_status_in]
            if self.execute(sql, params).rowcount:
                stamped.append(ds)
        return stamped

    def set_status(
        self,
        file_id: str,
        status: str,
        event: str,
        details: str | None = None,
        job_id: str | None = None,
        error: str | None = None,
    ) -> dict[str, Any]:
        """Manual or single status change, recorded as an event."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        with self.transaction():
            rows = self.files(file_ids=[file_id])
            if not rows:
                raise KeyError(file_id)
            ts = now()
            self.execute(
                "UPDATE file SET status = ?, error = ?, claimed_by = NULL, claimed_at = NULL, "
                "updated_at = ? WHERE file_id = ?",
                (status, error, ts, file_id),
            )
            self.add_events([Event(file_id, rows[0]["dataset_id"], event, status, details)], job_id, ts)
            if status == "available":
                self.stamp_dataset(
                    [rows[0]["dataset_id"]], "date_processing_end", ts, when_no_status_in=STATUSES[:3] + ("failed",)
                )
        return rows[0]

    # ------------------------------------------------------------------ registration
    def register(self, dataset_id: str, entries: Sequence[dict[str, Any]], source: str) -> tuple[int, int]:
        """Insert a manifest's files in one transaction; returns (added, unchanged).

        Each entry has file_id, file_name, archive_name, md5, sha256, size, transfer_checksum(_type) and
        ``line`` (for messages). A contradiction with what is registered, or an archive name another file
        already has, raises ValueError naming the line, and nothing is written.
        """
        done = self._register(dataset_id, entries, source, None)
        return done.added, done.unchanged

    def amend(
        self, dataset_id: str, entries: Sequence[dict[str, Any]], source: str, in_processing: Callable[[str], bool]
    ) -> Registration:
        """Like register, but correct the expected values (AMENDABLE) of files not yet `available`, each
        change an `amended` event with old and new values. A failed file whose checksum changed goes back
        to `received` when IN_PROCESSING(file_name) says its source is there, so `process` retries it."""
        return self._register(dataset_id, entries, source, in_processing)

    def _register(
        self,
        dataset_id: str,
        entries: Sequence[dict[str, Any]],
        source: str,
        in_processing: Callable[[str], bool] | None,
    ) -> Registration:
        ts = now()
        done = Registration()
        with self.transaction():
            by_id = {r["file_id"]: r for r in self.files(file_ids=[e["file_id"] for e in entries])}
            by_name = {r["file_name"]: r for r in self.files(names=[e["file_name"] for e in entries])}
            if any(e.get("archive_name") is None for e in entries):  # the collision check needs it
                raise ValueError(f"{source}: entries lack archive_name; pass them through registration.prepare")
            by_archive = self._archive_owners([e["archive_name"] for e in entries])
            new, changes = [], []
            for e in entries:
                where = f"{source}:{e['line']}"
                old = by_id.get(e["file_id"])
                if old is None:
                    _check_new(e, where, by_name, by_archive)
                    new.append(e)
                    continue
                if old["dataset_id"] != dataset_id:
                    raise ValueError(
                        f"{where}: file {e['file_id']} is already registered in dataset "
                        f"{old['dataset_id']}, not {dataset_id}"
                    )
                if old["file_name"] != e["file_name"]:
                    raise ValueError(
                        f"{where}: file {e['file_id']} is registered with file_name {old['file_name']}, "
                        f"the manifest says {e['file_name']}"
                    )
                diff = {
                    k: (old[k], e[k])
                    for k in AMENDABLE
                    if e.get(k) is not None and (old[k] is None or str(e[k]) != str(old[k]).strip())
                }
                known = [k for k in diff if diff[k][0] is not None]
                if in_processing is None and known:
                    k = known[0]
                    hint = "" if old["status"] == "available" else "; correct it with `legampi register --amend`"
                    raise ValueError(
                        f"{where}: file {e['file_id']} is registered with {k} {old[k]}, the manifest says {e[k]}{hint}"
                    )
                if in_processing is None or not diff:
                    done.unchanged += 1  # (a value the row lacks is recorded by --amend only)
                    continue
                if old["status"] in ("available", "processing"):
                    why = (
                        "is already available: archived and verified against its registered checksums"
                        if old["status"] == "available"
                        else f"is being processed by job {old['claimed_by']}; amend it once that job has ended"
                    )
                    raise ValueError(f"{where}: file {e['file_id']} {why}; its {', '.join(diff)} cannot be amended")
                changes.append((where, old, diff))
            self.insert_many(
                "dataset_log",
                ("dataset_id", "date_requested"),
                [(dataset_id, ts)],
                conflict="ON CONFLICT (dataset_id) DO NOTHING",
            )
            self._insert_new(dataset_id, new, source, ts)
            for where, old, diff in changes:
                self._amend_row(old, diff, where, in_processing or (lambda _name: False), done, ts)
            self.refresh_dataset_totals([dataset_id])
        done.added = len(new)
        return done

    def _archive_owners(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Registered files by archive name, for the names given (the column is indexed)."""
        out: dict[str, dict[str, Any]] = {}
        for chunk in chunks(sorted(set(names)), 500):
            for r in self.query(
                "SELECT file_id, dataset_id, file_name, archive_name FROM file WHERE archive_name IN "
                f"({','.join('?' * len(chunk))})",
                list(chunk),
            ):
                out.setdefault(r["archive_name"], r)
        return out

    def _insert_new(self, dataset_id: str, new: Sequence[dict[str, Any]], source: str, ts: str) -> None:
        cols = ("file_id", "dataset_id", "file_name", "archive_name", "size", "md5", "sha256")
        cols += ("transfer_checksum", "transfer_checksum_type", "status", "created_at", "updated_at")
        self.insert_many(
            "file",
            cols,
            [
                (
                    *(e["file_id"], dataset_id, e["file_name"], e["archive_name"], e.get("size"), e.get("md5")),
                    *(e.get("sha256"), e.get("transfer_checksum"), e.get("transfer_checksum_type")),
                    *("pending", ts, ts),
                )
                for e in new
            ],
        )
        self.insert_many(
            "filedataset",
            ("dataset_id", "file_id"),
            [(dataset_id, e["file_id"]) for e in new],
            conflict="ON CONFLICT DO NOTHING",
        )
        self.add_events(
            [Event(e["file_id"], dataset_id, "registered", "pending", f"from {source}") for e in new], at=ts
        )

    def _amend_row(
        self,
        old: dict[str, Any],
        diff: dict[str, tuple[Any, Any]],
        where: str,
        in_processing: Callable[[str], bool],
        done: Registration,
        ts: str,
    ) -> None:
        """Write one file's corrected values and its `amended` event (old and new values)."""
        status = old["status"]
        details = "; ".join(f"{k} {'(none)' if a is None else a} -> {b}" for k, (a, b) in diff.items())
        sets = [f"{k} = ?" for k in diff]
        if status == "failed" and set(diff) - {"size"}:
            if in_processing(old["file_name"]):
                status = "received"
                sets.append("error = NULL")
                done.retried.append(old["file_name"])
                details += "; failed -> received: the next `process` retries it"
            else:
                done.stuck.append(old["file_name"])
                details += "; stays failed: its source is not in processing"
        cur = self.execute(
            f"UPDATE file SET {', '.join(sets)}, status = ?, updated_at = ? WHERE file_id = ? AND status = ?",
            [*(b for _a, b in diff.values()), status, ts, old["file_id"], old["status"]],
        )
        if cur.rowcount != 1:
            raise ValueError(f"{where}: file {old['file_id']} changed while it was being amended; run it again")
        self.add_events(
            [Event(old["file_id"], old["dataset_id"], "amended", status, f"{details} (from {where})")], at=ts
        )
        done.amended += 1

    # ------------------------------------------------------------------ transfer monitor
    def tracking(self) -> dict[str, dict[str, Any]]:
        return {
            r["name"]: r
            for r in self.query("SELECT name, size, mtime, passes, first_seen, last_seen FROM trackingtable")
        }

    def apply_monitor_pass(
        self,
        upserts: Sequence[tuple[str, int, float, int]],
        forget: Sequence[str],
        moved: Sequence[dict[str, Any]],
        sizes: dict[str, int],
    ) -> None:
        """Write one monitor pass: tracking rows, files moved to processing, dataset dates."""
        ts = now()
        with self.transaction():
            old = self.tracking()
            new_rows = [(n, s, m, p, ts, ts) for n, s, m, p in upserts if n not in old]
            self.insert_many("trackingtable", ("name", "size", "mtime", "passes", "first_seen", "last_seen"), new_rows)
            for n, s, m, p in upserts:
                if n in old:
                    self.execute(
                        "UPDATE trackingtable SET size = ?, mtime = ?, passes = ?, last_seen = ? WHERE name = ?",
                        (s, m, p, ts, n),
                    )
            for chunk in chunks(list(forget), 500):
                self.execute(f"DELETE FROM trackingtable WHERE name IN ({','.join('?' * len(chunk))})", chunk)
            moved_names = {f["file_name"] for f in moved}
            for name, size in sizes.items():
                # a size from the manifest is kept; the observed size only fills a gap, and only once the
                # transfer has finished (a growing file's first partial size must not stick)
                if name in moved_names:
                    self.execute("UPDATE file SET size = ? WHERE file_name = ? AND size IS NULL", (size, name))
            seen = self.files(names=[r[0] for r in new_rows]) if new_rows else []
            self.stamp_dataset(
                {r["dataset_id"] for r in seen} | {f["dataset_id"] for f in moved}, "date_download_start", ts
            )
            for f in moved:
                self.execute(
                    "UPDATE file SET status = 'received', updated_at = ? WHERE file_id = ? AND status = 'pending'",
                    (ts, f["file_id"]),
                )
            self.add_events(
                [Event(f["file_id"], f["dataset_id"], "received", "received", "moved to processing") for f in moved],
                at=ts,
            )
            touched = {f["dataset_id"] for f in moved} | {r["dataset_id"] for r in seen}
            self.refresh_dataset_totals(touched)
            self.stamp_dataset(
                {f["dataset_id"] for f in moved}, "date_download_end", ts, when_no_status_in=("pending",)
            )

    # ------------------------------------------------------------------ jobs and claims
    def job_start(self, job_id: str, command: str, host: str, ranks: int) -> None:
        ts = now()
        with self.transaction():
            self.insert_many(
                "job",
                ("job_id", "command", "host", "pid", "ranks", "started_at", "heartbeat_at"),
                [(job_id, command, host, os.getpid(), ranks, ts, ts)],
            )

    def job_heartbeat(self, job_id: str) -> None:
        self.execute("UPDATE job SET heartbeat_at = ? WHERE job_id = ?", (now(), job_id))

    def job_end(
        self, job_id: str, exit_status: int, summary: str, ranks: Sequence[tuple[int, str, int, int, float]] = ()
    ) -> None:
        with self.transaction():
            self.execute(
                "UPDATE job SET ended_at = ?, exit_status = ?, summary = ?, state = 'ended' WHERE job_id = ?",
                (now(), exit_status, summary, job_id),
            )
            self.insert_many(
                "job_rank", ("job_id", "rank", "host", "files", "bytes", "seconds"), [(job_id, *r) for r in ranks]
            )

    def jobs(self, limit: int = 20) -> list[dict[str, Any]]:
        return self.query(
            "SELECT job_id, command, host, pid, ranks, started_at, heartbeat_at, ended_at, "
            "exit_status, summary FROM job ORDER BY started_at DESC LIMIT ?",
            (limit,),
        )

    def job_ranks(self, job_ids: Sequence[str]) -> list[dict[str, Any]]:
        if not job_ids:
            return []
        return self.query(
            "SELECT job_id, rank, host, files, bytes, seconds FROM job_rank WHERE job_id IN "
            f"({','.join('?' * len(job_ids))}) ORDER BY job_id, rank",
            list(job_ids),
        )

    def job_failures(self, job_ids: Sequence[str]) -> dict[str, int]:
        if not job_ids:
            return {}
        rows = self.query(
            "SELECT job_id, count(*) AS n FROM file_event WHERE event = 'failed' AND job_id IN "
            f"({','.join('?' * len(job_ids))}) GROUP BY job_id",
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
                    f"attempts = attempts + 1 WHERE file_id IN ({','.join('?' * len(chunk))}) AND status IN "
                    f"({','.join('?' * len(allowed))}) RETURNING file_id, dataset_id",
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
                marks = ",".join("?" * len(chunk))
                where = f"file_id IN ({marks}) AND status = 'processing'"
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

    @staticmethod
    def cutoff(seconds: float) -> str:
        """The timestamp `seconds` ago, comparable with the stored ISO strings."""
        return (_dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=seconds)).isoformat(timespec="microseconds")

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

    def record_results(self, results: Sequence[Any], job_id: str | None) -> list[Any]:
        """Write a batch of FileResults in one transaction; returns those recorded as available.

        Only rows still claimed by this job are updated (a released or re-claimed file is not overwritten).
        """
        if not results:
            return []
        ts = now()
        with self.transaction():
            rows = {r["file_id"]: r for r in self.files(file_ids=[x.file_id for x in results])}
            ok = [
                x for x in results if x.file_id in rows and (job_id is None or rows[x.file_id]["claimed_by"] == job_id)
            ]
            cols = (
                "file_id",
                "status",
                "md5",
                "sha256",
                "archive_path",
                "archive_checksum",
                "archive_checksum_type",
                "archive_key",
                "plain_size",
                "archive_size",
                "error",
            )
            casts = {"plain_size": "BIGINT", "archive_size": "BIGINT"}
            sets = ", ".join(
                f"{c} = CAST(v.column{i + 1} AS {casts.get(c, 'TEXT')})"
                for i, c in enumerate(cols)
                if c not in ("file_id", "md5", "sha256")
            )
            for chunk in chunks(ok, 200):
                values = []
                for x in chunk:
                    done = x.status == "available"
                    values += [
                        x.file_id,
                        x.status,
                        x.md5 if done else None,
                        x.sha256 if done else None,
                        x.archive_path,
                        x.archive_checksum,
                        x.archive_checksum_type,
                        x.archive_key,
                        x.plain_size,
                        x.archive_size,
                        x.error,
                    ]
                ph = ",".join(["(" + ",".join("?" * len(cols)) + ")"] * len(chunk))
                self.execute(
                    f"UPDATE file SET {sets}, md5 = coalesce(file.md5, CAST(v.column3 AS TEXT)), "
                    f"sha256 = coalesce(file.sha256, CAST(v.column4 AS TEXT)), "
                    f"claimed_by = NULL, claimed_at = NULL, updated_at = ? FROM (VALUES {ph}) AS v "
                    f"WHERE file.file_id = v.column1",
                    [ts, *values],
                )
            self.add_events(
                [Event(x.file_id, rows[x.file_id]["dataset_id"], x.status, x.status, _result_details(x)) for x in ok],
                job_id,
                ts,
            )
            datasets = {rows[x.file_id]["dataset_id"] for x in ok if x.status == "available"}
            self.stamp_dataset(
                datasets, "date_processing_end", ts, when_no_status_in=("pending", "received", "processing", "failed")
            )
            if job_id is not None:
                self.job_heartbeat(job_id)
        return [x for x in ok if x.status == "available"]

    def record_rekeys(self, rows: Sequence[dict[str, Any]], job_id: str | None = None) -> list[str]:
        """Point rows at their re-encrypted archive copies (one transaction); returns the file ids changed.

        A row changes only while it is still `available` with the archive checksum the rotation started
        from, so a concurrent change to the file is never overwritten. Each row dict has file_id,
        dataset_id, old_checksum, new_checksum, new_key, archive_size and details (the event text).
        """
        ts = now()
        done: list[dict[str, Any]] = []
        with self.transaction():
            for r in rows:
                cur = self.execute(
                    "UPDATE file SET archive_checksum = ?, archive_key = ?, archive_size = ?, "
                    "updated_at = ? WHERE file_id = ? AND status = 'available' AND "
                    "archive_checksum = ?",
                    (r["new_checksum"], r["new_key"], r["archive_size"], ts, r["file_id"], r["old_checksum"]),
                )
                if cur.rowcount:
                    done.append(r)
            self.add_events(
                [Event(r["file_id"], r["dataset_id"], "rekeyed", "available", r["details"]) for r in done], job_id, ts
            )
        return [r["file_id"] for r in done]


def _check_new(
    e: dict[str, Any], where: str, by_name: dict[str, dict[str, Any]], by_archive: dict[str, dict[str, Any]]
) -> None:
    """A new file must not reuse a registered file's name or archive path (one would lose its copy)."""
    clash = by_name.get(e["file_name"])
    if clash is not None:
        raise ValueError(
            f"{where}: file name {e['file_name']!r} is already registered as file "
            f"{clash['file_id']} of dataset {clash['dataset_id']}"
        )
    owner = by_archive.get(e["archive_name"])
    if owner is not None and owner["file_id"] != e["file_id"]:
        raise ValueError(
            f"{where}: {e['file_name']!r} would be archived as {e['archive_name']!r}, the archive path of "
            f"registered file {owner['file_id']} ({owner['file_name']!r}, dataset {owner['dataset_id']}); "
            "two files cannot share one archive path: rename one of them"
        )


def _result_details(x: Any) -> str:
    if x.status == "available":
        return (
            f"archived {x.archive_path} {x.archive_checksum_type}:{x.archive_checksum} "
            f"{x.bytes_read} bytes in {x.seconds:.3f}s on {x.host} rank {x.rank}"
        )
    text = f"{x.error_kind}: {x.error}"
    if getattr(x, "quarantined_to", None):
        text += f" (source moved to {x.quarantined_to})"
    return text


def _split_sql(text: str) -> list[str]:
    """Split a schema file on ';' at line ends, ignoring comment-only chunks."""
    out, buf = [], []
    for line in text.splitlines():
        stripped = line.split("--", 1)[0].rstrip()
        buf.append(stripped)
        if stripped.endswith(";"):
            stmt = "\n".join(buf).strip().rstrip(";").strip()
            if stmt:
                out.append(stmt)
            buf = []
    tail = "\n".join(buf).strip()
    if tail:
        out.append(tail)
    return out
