"""Log set-up for every command: text or one JSON object per line, each record tagged with its MPI rank."""

from __future__ import annotations

import json
import logging
import sys


class RankFilter(logging.Filter):
    """Stamps each record with the rank, so the lines of many ranks in one Slurm log can be told apart."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line for the site's log collector."""

    def format(self, record: logging.LogRecord) -> str:
        obj = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "rank": getattr(record, "rank", 0),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k in ("file_id", "dataset_id"):
            if hasattr(record, k):
                obj[k] = getattr(record, k)
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj)


def setup_logging(level: str, fmt: str, log_file: str | None, rank: int = 0) -> None:
    """Replace the root handlers: stderr (and LOG_FILE) in FMT; called again once the MPI rank is known."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    text = logging.Formatter("%(asctime)s rank %(rank)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        h.setFormatter(JsonFormatter() if fmt == "json" else text)
        h.addFilter(RankFilter(rank))
        root.addHandler(h)
    root.setLevel(getattr(logging, level.upper()))
    # The crypt4gh package logs key material at DEBUG: never let it through, whatever --log-level says.
    logging.getLogger("crypt4gh").setLevel(logging.WARNING)
