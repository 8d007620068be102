"""Issue 17: JSON logs carry millisecond UTC times and the structured fields a site's log stack filters on;
plain logs stay readable (UTC milliseconds too)."""

from __future__ import annotations

import io
import json
import logging
import re
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from legampi import logs
from legampi.stream import FileResult

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|\+00:00)$")


@pytest.fixture
def capture():
    """Root logging set up as the CLI does, stderr swapped for a buffer; restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)

    def setup(fmt: str) -> io.StringIO:
        buf = io.StringIO()
        logs.setup_logging("info", fmt, None, rank=0)
        for h in root.handlers:
            h.setStream(buf)  # type: ignore[attr-defined]
        return buf

    yield setup
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])


def _lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(x) for x in buf.getvalue().splitlines()]


def test_json_time_has_milliseconds_in_utc(capture) -> None:
    buf = capture("json")
    logging.getLogger("legampi.test").info("hello")
    (line,) = _lines(buf)
    assert ISO_MS.match(line["time"]), line["time"]
    assert line["rank"] == 0 and line["host"] == socket.gethostname() and line["message"] == "hello"


def test_text_time_has_milliseconds_and_stays_readable(capture) -> None:
    buf = capture("text")
    logging.getLogger("legampi.test").info("hello %s", "there")
    text = buf.getvalue().strip()
    stamp, rest = text.split(" ", 1)
    assert ISO_MS.match(stamp), stamp
    assert rest == "rank 0 INFO legampi.test: hello there"


def _recorder(tmp_path: Path):
    from legampi.ingest import Recorder

    cfg = SimpleNamespace(func=SimpleNamespace(batch_size=1000), workspaces=SimpleNamespace(keep_processed=True))
    rec = Recorder(db=None, cfg=cfg, job_id="job-7", threaded=False)  # type: ignore[arg-type]
    rec.datasets = {"F1": "EGAD1", "F2": "EGAD1"}
    return rec


def test_archived_and_failed_lines_carry_structured_fields(capture, tmp_path: Path) -> None:
    buf = capture("json")
    rec = _recorder(tmp_path)
    rec.add(
        FileResult(
            "F1",
            "d/a.bam.c4gh",
            "available",
            archive_path="/x/a.bam.c4gh",
            bytes_read=1234,
            seconds=0.5,
            host="node7",
            rank=3,
        )
    )
    rec.add(
        FileResult(
            "F2",
            "d/b.bam.c4gh",
            "failed",
            error="bad md5",
            error_kind="checksum",
            bytes_read=99,
            seconds=0.25,
            host="node8",
            rank=2,
        )
    )
    ok, bad = _lines(buf)
    assert {k: ok[k] for k in ("job", "rank", "host", "dataset_id", "file_id", "file_name", "bytes", "seconds")} == {
        "job": "job-7",
        "rank": 3,
        "host": "node7",
        "dataset_id": "EGAD1",
        "file_id": "F1",
        "file_name": "d/a.bam.c4gh",
        "bytes": 1234,
        "seconds": 0.5,
    }
    assert "kind" not in ok
    assert (bad["level"], bad["kind"], bad["file_id"], bad["rank"], bad["host"], bad["bytes"]) == (
        "ERROR",
        "checksum",
        "F2",
        2,
        "node8",
        99,
    )
    assert ISO_MS.match(bad["time"])


def test_progress_lines_carry_bytes_and_seconds(capture) -> None:
    from legampi.progress import Progress

    buf = capture("json")
    p = Progress(2, 100, interval=0.0, stream=io.StringIO())
    p.files, p.bytes = 1, 40
    p.tick(force=True)
    (line,) = _lines(buf)
    assert line["message"].startswith("progress: 1/2 files")
    assert line["bytes"] == 40 and isinstance(line["seconds"], float)


def test_recovery_problems_carry_file_and_kind(capture) -> None:
    from legampi.recovery import RecoveryReport

    rep = RecoveryReport()
    rep.problem("archive_conflict: a (file F1): not adopted", file_id="F1", file_name="a", kind="archive_conflict")
    assert rep.problems == ["archive_conflict: a (file F1): not adopted"]
    assert rep.problem_fields == [{"file_id": "F1", "file_name": "a", "kind": "archive_conflict"}]


def test_recovery_problem_lines_are_structured(capture) -> None:
    from legampi.recovery import RecoveryReport, log_problems

    buf = capture("json")
    rep = RecoveryReport()
    rep.problem("archive_conflict: a (file F1): not adopted", file_id="F1", file_name="a", kind="archive_conflict")
    rep.problem("cannot list incomplete S3 uploads: timeout", kind="io")
    log_problems(rep, "job-9")
    first, second = _lines(buf)
    assert (first["level"], first["job"], first["file_id"], first["file_name"], first["kind"]) == (
        "ERROR",
        "job-9",
        "F1",
        "a",
        "archive_conflict",
    )
    assert first["message"] == "recover: archive_conflict: a (file F1): not adopted"
    assert second["kind"] == "io" and "file_id" not in second
