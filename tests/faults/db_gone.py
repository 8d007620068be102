"""`legampi` whose tracking database is gone for good while MARKER exists (the fault tests' switch).

Usage: python db_gone.py MARKER LEGAMPI-ARGS...  (also under mpiexec). While the marker file exists every
statement fails as on a lost SQLite file or server; reconnecting "works" and the next statement fails
again, so the recorder's retries run out exactly as they would against a database that stays away.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from legampi.db import connection

MARKER = Path(sys.argv[1])
_execute = connection.Connection.execute


def _gone_execute(self: connection.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    if MARKER.exists():
        raise connection.DatabaseError(f"SQLite {self.label}: disk I/O error (the test took the database away)")
    return _execute(self, sql, params)


connection.Connection.execute = _gone_execute  # type: ignore[method-assign]

if __name__ == "__main__":
    from legampi.cli import main

    sys.exit(main(sys.argv[2:]))
