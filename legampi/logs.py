"""Log set-up for every command: text or one JSON object per line, each record tagged with its MPI rank.

Times are UTC with milliseconds in both formats (ISO 8601, ``Z``), so the lines of many ranks and hosts
sort and line up. JSON lines also carry the structured fields a log call passes with ``extra=`` (see
FIELDS), so a site's log stack can filter by job, dataset, file, failure kind...
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from datetime import datetime, timezone

# Structured fields a log call may pass with extra=; JSON lines carry those present, in this order.
# job: job id; dataset_id; file_id, file_name: the file the line is about; kind: the failure kind
# (formats.IngestError kinds, "archive_conflict"...); bytes, seconds: what the line's work moved and took.
FIELDS: tuple[str, ...] = ("job", "dataset_id", "file_id", "file_name", "kind", "bytes", "seconds")


def utc_ms(created: float) -> str:
    """A record's time as ISO 8601 UTC with milliseconds, e.g. 2026-12-02T04:32:29.123Z."""
    return datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RankFilter(logging.Filter):
    """Stamps each record with the rank and host, so the lines of many ranks in one Slurm log can be told
    apart; a log call about another rank's work (rank 0 logging a worker's result) passes its own."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank
        self.host = socket.gethostname()

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "rank"):
            record.rank = self.rank
        if not getattr(record, "host", None):
            record.host = self.host
        return True


class TextFormatter(logging.Formatter):
    """The readable format, with UTC millisecond times."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s rank %(rank)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_ms(record.created)


class JsonFormatter(logging.Formatter):
    """One JSON object per line for the site's log collector."""

    def format(self, record: logging.LogRecord) -> str:
        obj = {
            "time": utc_ms(record.created),
            "level": record.levelname,
            "rank": getattr(record, "rank", 0),
            "host": getattr(record, "host", None) or socket.gethostname(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k in FIELDS:
            if getattr(record, k, None) is not None:
                obj[k] = getattr(record, k)
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str)


def setup_logging(level: str, fmt: str, log_file: str | None, rank: int = 0) -> None:
    """Replace the root handlers: stderr (and LOG_FILE) in FMT; called again once the MPI rank is known."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        h.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
        h.addFilter(RankFilter(rank))
        root.addHandler(h)
    root.setLevel(getattr(logging, level.upper()))
    # The crypt4gh package logs key material at DEBUG: never let it through, whatever --log-level says.
    logging.getLogger("crypt4gh").setLevel(logging.WARNING)
