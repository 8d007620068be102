"""One connection to the tracking database: connect, transactions, placeholder translation, errors.

SQLite (standard library) is the embedded default, PostgreSQL (psycopg2) the production backend. SQL is
written once with ``?`` placeholders and translated for psycopg2; every value is a bound parameter.
Timestamps are written as ISO-8601 UTC strings (PostgreSQL casts them to TIMESTAMPTZ) and read back as
ISO strings from both backends, so callers never see backend differences.

``Connection`` is the base of every part of ``Database`` (schema, files, registration, tracking, jobs,
results): each part subclasses it, so the primitives below are checked by mypy wherever they are used.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from ..config import DatabaseConfig
from .rows import Event

_T = TypeVar("_T")


class DatabaseError(Exception):
    """The database cannot be reached or used; the message never contains a password."""


class Cursor(Protocol):
    """What legampi reads from a DB-API cursor (sqlite3 and psycopg2 alike)."""

    @property
    def description(self) -> Any: ...

    @property
    def rowcount(self) -> int: ...

    def fetchall(self) -> list[Any]: ...


def now() -> str:
    """The current UTC time as the ISO-8601 string stored in every timestamp column."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def cutoff(seconds: float) -> str:
    """The timestamp `seconds` ago, comparable with the stored ISO strings."""
    return (_dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=seconds)).isoformat(timespec="microseconds")


def _iso(value: Any) -> Any:
    """PostgreSQL's datetimes as the ISO strings SQLite returns (one representation for callers)."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.astimezone(_dt.timezone.utc).isoformat(timespec="microseconds")
    return value


# PostgreSQL type OIDs (pg_type) of `timestamp`, which `query` turns into ISO text, and of `timestamptz`,
# every timestamp column of the schema, which the connection reads as ISO text at once (_stamps_as_text).
_PG_TIMESTAMPS = frozenset((1114,))
_PG_TIMESTAMPTZ = 1184
# timestamptz as PostgreSQL writes it in a UTC session with DateStyle ISO: the seconds' fraction has
# no trailing zeros (none at all on a whole second) and the offset is "+00".
_PG_UTC_TEXT = re.compile(r"(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)(?:\.(\d{1,6}))?\+00")


def _stamps_as_text(pg: Any) -> None:
    """Read this connection's timestamptz values as the ISO strings SQLite returns, straight from
    PostgreSQL's text: building a datetime per value and formatting it again cost more than the query
    on large reads (a monitor pass reads every tracked file's two timestamps). The session's time zone
    is UTC so the text needs no arithmetic; text in any other form (a pooler that drops the setting)
    takes the driver's own parser and `_iso`."""
    import psycopg2.extensions as ext

    pg.cursor().execute("SET TIME ZONE 'UTC'")

    def cast(value: str | bytes | None, cur: Any) -> str | None:
        if value is None:
            return None
        text = value.decode("ascii") if isinstance(value, bytes) else value
        m = _PG_UTC_TEXT.fullmatch(text)
        if m is None:
            return _iso(ext.PYDATETIMETZ(text, cur))  # type: ignore[no-any-return]
        day, clock, frac = m.groups()
        return f"{day}T{clock}.{(frac or '').ljust(6, '0')}+00:00"

    ext.register_type(ext.new_type((_PG_TIMESTAMPTZ,), "LEGAMPI_TIMESTAMPTZ_ISO", cast), pg)


# Below this many new rows a table's statistics are left to autovacuum (analyze_after_growth).
_ANALYZE_MIN_ROWS = 1000


def chunks(seq: Sequence[_T], n: int) -> Iterator[Sequence[_T]]:
    """Slices of at most N items: statements stay under the backends' parameter limits."""
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def marks(n: int) -> str:
    """``?,?,...`` for an ``IN (...)`` list of N bound values."""
    return ",".join("?" * n)


class Connection:
    """A connection and the primitives every query uses; ``Database`` adds the queries."""

    def __init__(self, conn: Any, backend: str, label: str):
        self.conn, self.backend, self.label = conn, backend, label
        self._in_tx = False

    @classmethod
    def connect(cls: type[_C], cfg: DatabaseConfig) -> _C:
        """Open the configured database; a failure is a DatabaseError whose message hides the password."""
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
            pg = psycopg2.connect(**kwargs)
        except psycopg2.Error as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if cfg.password is not None:
                msg = msg.replace(cfg.password.reveal(), "<hidden>")
            raise DatabaseError(f"cannot connect to PostgreSQL {label}: {msg}") from None
        pg.autocommit = True
        try:
            _stamps_as_text(pg)
        except psycopg2.Error as exc:
            pg.close()
            raise DatabaseError(f"cannot set up the PostgreSQL session {label}: {type(exc).__name__}") from None
        return cls(pg, "postgresql", label)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a dead connection has nothing left to report
            self.conn.close()

    def _sql(self, sql: str) -> str:
        """qmark to psycopg2's format style; a literal ``%`` (``LIKE '%x'``) must be doubled first."""
        return sql.replace("%", "%%").replace("?", "%s") if self.backend == "postgresql" else sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement; a driver error becomes a DatabaseError naming the database."""
        try:
            cur = self.conn.cursor()  # a closed connection fails here (psycopg2: InterfaceError)
            cur.execute(self._sql(sql), tuple(params))
        except Exception as exc:
            raise self._wrap(exc) from exc
        return cur  # type: ignore[no-any-return]  # the driver's cursor (conn is untyped)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts keyed by column name, timestamps as ISO strings on both backends.

        Only PostgreSQL's timestamp columns (told by their type in the cursor's description) are
        converted: SQLite stores the ISO strings already, and a value-by-value check cost more than
        the query on large reads (status, monitor passes)."""
        cur = self.execute(sql, params)
        names = [d[0] for d in cur.description]
        rows = cur.fetchall()
        stamps = [i for i, d in enumerate(cur.description) if d[1] in _PG_TIMESTAMPS]
        if not stamps:
            return [dict(zip(names, row, strict=True)) for row in rows]
        out = []
        for row in rows:
            values = list(row)
            for i in stamps:
                values[i] = _iso(values[i])
            out.append(dict(zip(names, values, strict=True)))
        return out

    def _wrap(self, exc: Exception) -> Exception:
        if isinstance(exc, sqlite3.Error):
            return DatabaseError(f"SQLite {self.label}: {exc}")
        mod = type(exc).__module__
        if mod.startswith("psycopg2"):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return DatabaseError(f"PostgreSQL {self.label}: {first}")
        return exc

    @contextlib.contextmanager
    def transaction(self: _C) -> Iterator[_C]:
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

    @staticmethod
    def cutoff(seconds: float) -> str:
        """The timestamp `seconds` ago, comparable with the stored ISO strings."""
        return cutoff(seconds)

    # ------------------------------------------------------------------ generic bulk helpers
    def insert_many(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], conflict: str = ""
    ) -> None:
        """Multi-row INSERT: one statement for many rows (no per-row round trip)."""
        if not rows:
            return
        per = max(1, 30000 // max(1, len(columns)))
        ph = "(" + marks(len(columns)) + ")"
        for chunk in chunks(list(rows), min(per, 500)):
            sql = (
                f"INSERT INTO {table} ({','.join(columns)}) VALUES "
                + ",".join([ph] * len(chunk))
                + (f" {conflict}" if conflict else "")
            )
            self.execute(sql, [v for row in chunk for v in row])

    def update_from_values(
        self,
        table: str,
        key: str,
        columns: Sequence[tuple[str, str]],
        rows: Sequence[Sequence[Any]],
        extra_sets: Sequence[tuple[str, Any]] = (),
        where: str = "",
    ) -> None:
        """Many rows' new values in one statement per 1,000 rows (``UPDATE ... FROM (VALUES ...)``, which
        SQLite 3.33+ and PostgreSQL share) instead of one UPDATE per row: each row is (KEY value, value of
        each of COLUMNS), COLUMNS are (name, SQL type) so PostgreSQL casts the VALUES' untyped text;
        EXTRA_SETS are columns set to one value for all rows; WHERE narrows which rows change."""
        if not rows:
            return
        width = 1 + len(columns)
        sets = [f"{c} = CAST(v.column{i + 2} AS {t})" for i, (c, t) in enumerate(columns)]
        sets += [f"{c} = ?" for c, _v in extra_sets]
        for chunk in chunks(list(rows), 1000):
            sql = (
                f"UPDATE {table} SET {', '.join(sets)} FROM (VALUES "
                + ",".join(["(" + marks(width) + ")"] * len(chunk))
                + f") AS v WHERE {table}.{key} = v.column1"
                + (f" AND {where}" if where else "")
            )
            keyed, keys = self.key_filter(table, key, [row[0] for row in chunk])
            self.execute(sql + keyed, [*(v for _c, v in extra_sets), *(x for row in chunk for x in row), *keys])

    def key_filter(self, table: str, key: str, keys: Sequence[Any]) -> tuple[str, list[Any]]:
        """What to add to an ``UPDATE TABLE ... FROM (VALUES ...) WHERE TABLE.KEY = v.column1`` on
        PostgreSQL: the same keys again as an IN list. PostgreSQL plans the join with VALUES as a hash
        join over a sequential scan of TABLE (a whole-table read per batch, whose cost grows with the
        archive); the IN list makes it an index scan on KEY. SQLite already loops over VALUES and
        probes KEY's index, so nothing is added there."""
        if self.backend != "postgresql":
            return "", []
        return f" AND {table}.{key} IN ({marks(len(keys))})", list(keys)

    def analyze_after_growth(self, table: str, added: int) -> None:
        """PostgreSQL: refresh the planner's statistics of TABLE now when ADDED rows are 10 % or more of
        the rows it last counted (autovacuum's own rule, applied at once instead of within its next
        minute). With stale statistics a freshly filled table looks nearly empty, and every keyed
        UPDATE or IN-list read that follows (monitor passes, claims, results) scans it whole.
        SQLite's planner uses its indexes without statistics: nothing to do there."""
        if self.backend != "postgresql" or added < _ANALYZE_MIN_ROWS:
            return
        rows = self.query("SELECT reltuples FROM pg_class WHERE oid = CAST(? AS regclass)", (table,))
        known = float(rows[0]["reltuples"]) if rows else -1.0
        if known < 0 or added >= 0.1 * known:
            self.execute(f"ANALYZE {table}")

    def add_events(self, events: Iterable[Event], job_id: str | None = None, at: str | None = None) -> None:
        """Append audit events, all stamped with one time (AT, or now) and JOB_ID."""
        at = at or now()
        self.insert_many(
            "file_event",
            ("file_id", "dataset_id", "event", "status", "details", "job_id", "at"),
            [(e.file_id, e.dataset_id, e.event, e.status, e.details, job_id, at) for e in events],
        )


_C = TypeVar("_C", bound=Connection)
