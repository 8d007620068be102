"""The tracking database: the only part of legampi that speaks SQL or imports a database driver.

The database is the checkpoint of the whole system: a file is ``available`` only after its archived copy
was verified and this layer committed the row; everything else can be redone.

One module per concern, each a part of ``Database``:

- ``connection``: connect (SQLite or PostgreSQL), transactions, ``?`` placeholders, error wrapping;
- ``schema``: the numbered migrations in ``sql/<backend>/``, the recorded version, ``init-db``;
- ``files``: file and dataset rows, events, dataset totals and dates, manual status changes;
- ``register``: registering (and amending) a manifest's files;
- ``tracking``: the transfer monitor's state and passes;
- ``jobs``: jobs, claims, releases, stale claims;
- ``archived``: claims on `available` files (`rekey`, `verify-archive`; the status stays);
- ``results``: recording a batch of results or re-keyed copies;
- ``rows``: the typed rows (FileRow, DatasetRow, JobRow, Event, Registration) and column lists.
"""

from __future__ import annotations

from ..status import DATASET_DATES, STATUSES
from .archived import ArchivedClaimsMixin
from .connection import Connection, Cursor, DatabaseError, chunks, cutoff, now
from .register import RegisterMixin
from .results import ResultsMixin
from .rows import (
    AMENDABLE,
    DATASET_COLUMNS,
    FILE_COLUMNS,
    JOB_COLUMNS,
    DatasetRow,
    Event,
    FileRow,
    JobRow,
    Registration,
)
from .schema import SCHEMA_VERSION, SchemaMixin, migrations, split_sql
from .tracking import TrackingMixin


class Database(SchemaMixin, RegisterMixin, TrackingMixin, ResultsMixin, ArchivedClaimsMixin):
    """A connection to the tracking database with the queries legampi needs.

    Each part is a subclass of ``Connection`` (a mixin with a real base), so one object keeps the flat
    API every caller uses (``db.claim``, ``db.files``...) and mypy checks each part's calls against the
    primitives it inherits, with nothing forwarded by hand.
    """


__all__ = [
    "AMENDABLE",
    "DATASET_COLUMNS",
    "DATASET_DATES",
    "FILE_COLUMNS",
    "JOB_COLUMNS",
    "SCHEMA_VERSION",
    "STATUSES",
    "Connection",
    "Cursor",
    "Database",
    "DatabaseError",
    "DatasetRow",
    "Event",
    "FileRow",
    "JobRow",
    "Registration",
    "chunks",
    "cutoff",
    "migrations",
    "now",
    "split_sql",
]
