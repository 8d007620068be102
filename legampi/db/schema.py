"""The schema as numbered migrations, its recorded version, and `init-db`.

Each backend has one folder of steps, ``sql/<backend>/NNN_<what>.sql``: step 1 is the base schema and
step N upgrades version N-1 to N. ``init_schema`` applies, in order and in one transaction, every step
after the version recorded in ``schema_version`` (none for a fresh database), then records the version
reached: a fresh database and an upgraded one run the same statements, so they cannot differ. The
files are package data (``legampi.sql``, mapped from the top-level ``sql/`` folder by setup.cfg) read
with importlib.resources, so an installed wheel finds them wherever it was installed.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

from .connection import Connection, DatabaseError, chunks

log = logging.getLogger("legampi.db")

SCHEMA_VERSION = 4  # the last step in sql/<backend>/ (tests/unit/test_db_layer.py checks it)
BACKENDS = ("sqlite", "postgresql")
_STEP = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    """One step: the version it brings the schema to, and its SQL file."""

    version: int
    name: str
    file: Traversable

    def statements(self) -> list[str]:
        return split_sql(self.file.read_text(encoding="utf-8"))


def sql_root() -> Traversable:
    """The folder of schema files: package data ``legampi.sql`` once installed (wheel, editable or
    ``pip install --user``), else the ``sql/`` folder beside the package in a plain source checkout."""
    try:
        return importlib.resources.files("legampi.sql")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "sql"


def migrations(backend: str) -> list[Migration]:
    """Every step for BACKEND in version order: 1, 2, ... SCHEMA_VERSION, without a gap."""
    folder = sql_root() / backend
    steps = sorted(
        (int(m.group(1)), f) for f in folder.iterdir() if f.is_file() and (m := _STEP.match(f.name)) is not None
    )
    versions = [v for v, _f in steps]
    if versions != list(range(1, SCHEMA_VERSION + 1)):
        raise DatabaseError(
            f"schema files for {backend} in {folder}: found versions {versions}, "
            f"this legampi needs 1 to {SCHEMA_VERSION} (a broken installation?)"
        )
    return [Migration(v, f.name, f) for v, f in steps]


def split_sql(text: str) -> list[str]:
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


class SchemaMixin(Connection):
    """Schema version, creation and in-place upgrade."""

    def schema_version(self) -> int | None:
        """The recorded version, or None when the database has no legampi schema."""
        try:
            rows = self.query("SELECT max(version) AS v FROM schema_version")
        except DatabaseError:
            if self.backend == "postgresql":
                with contextlib.suppress(Exception):
                    self.conn.rollback()
            return None
        return rows[0]["v"] if rows else None

    def require_schema(self) -> None:
        """Refuse to run on a database init-db has not created or not upgraded to this version."""
        v = self.schema_version()
        if v is None:
            raise DatabaseError(f"{self.label}: no legampi schema; run `legampi init-db` first")
        if v != SCHEMA_VERSION:
            raise DatabaseError(
                f"{self.label}: schema version {v}, this legampi needs {SCHEMA_VERSION}; run `legampi init-db`"
            )

    def init_schema(self, extensions: Sequence[str] = ()) -> tuple[int | None, int]:
        """Create the schema, or upgrade an older one in place; returns (version before, version after).

        Runs every migration after the recorded version (SQLite has no ADD COLUMN IF NOT EXISTS, so the
        version decides what runs), all in one transaction: a failed upgrade leaves the database as it
        was. A concurrent init-db waits for the lock, then finds the new version and does nothing.
        EXTENSIONS (the configured input extensions) map existing file names to the archive names that
        version 2 records.
        """
        steps = migrations(self.backend)
        before = self.schema_version()
        after_step: dict[int, Callable[[], None]] = {2: lambda: self._fill_archive_names(extensions)}
        with self.transaction():
            current = self._locked_version()
            if current > SCHEMA_VERSION:
                raise DatabaseError(
                    f"{self.label}: schema version {current} is newer than this legampi's {SCHEMA_VERSION}"
                )
            for step in [m for m in steps if m.version > current]:
                log.debug("schema step %s", step.name)
                for stmt in step.statements():
                    self.execute(stmt)
                after_step.get(step.version, lambda: None)()
            if current < SCHEMA_VERSION:
                self.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        return before, SCHEMA_VERSION

    def _locked_version(self) -> int:
        """The recorded version (0: no schema yet), read under a lock that serialises init-db runs.

        SQLite's BEGIN IMMEDIATE already holds the write lock; PostgreSQL takes a transaction-scoped
        advisory lock (it works before the schema_version table exists) and asks the catalog whether
        the table is there, since a failed query would abort the transaction.
        """
        if self.backend == "postgresql":
            self.execute("SELECT pg_advisory_xact_lock(?)", (_PG_INIT_LOCK,))
            exists = self.query("SELECT to_regclass('schema_version') IS NOT NULL AS t")[0]["t"]
        else:
            exists = bool(
                self.query("SELECT 1 AS t FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'")
            )
        if not exists:
            return 0
        return int(self.query("SELECT max(version) AS v FROM schema_version")[0]["v"] or 0)

    def _fill_archive_names(self, extensions: Sequence[str]) -> None:
        """Record each registered file's archive name (upgrade to version 2), in pages of file ids so
        memory stays bounded; a name that maps to no archive path stays NULL and is reported."""
        from ..archive import archive_name
        from ..formats.base import IngestError

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


# pg_advisory_xact_lock's key for init-db: any fixed 64-bit number that nothing else uses ("legampi\0").
_PG_INIT_LOCK = 0x6C6567616D706900
