"""Issue 17: a `process` job that claims nothing says where the unfinished files stand and which command
moves each on (legampi.backlog, counted without MPI)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from legampi.backlog import Backlog

ROWS = [
    {"file_name": "d/a.c4gh", "status": "pending", "claimed_by": None},  # still arriving in receiving
    {"file_name": "d/b.c4gh", "status": "pending", "claimed_by": None},  # in receiving too
    {"file_name": "d/c.c4gh", "status": "pending", "claimed_by": None},  # nowhere
    {"file_name": "d/d.c4gh", "status": "failed", "claimed_by": None},
    {"file_name": "d/e.c4gh", "status": "processing", "claimed_by": "job-other"},
    {"file_name": "d/f.c4gh", "status": "processing", "claimed_by": "job-third"},
    {"file_name": "d/g.c4gh", "status": "processing", "claimed_by": "job-other"},
    {"file_name": "d/h.c4gh", "status": "received", "claimed_by": None},  # in processing, other dataset
]


def test_count_sorts_files_by_what_holds_them_up() -> None:
    b = Backlog.count(ROWS, ["d/a.c4gh", "d/b.c4gh", "stray.c4gh"], ["d/h.c4gh"], job_id="job-me")
    assert b == Backlog(in_receiving=2, not_seen=1, failed=1, claimed=3, claiming_jobs=2, ready=1)


def test_own_claims_are_not_another_jobs() -> None:
    b = Backlog.count([{"file_name": "x", "status": "processing", "claimed_by": "job-me"}], [], [], "job-me")
    assert b.claimed == 0 and b.claiming_jobs == 0


def test_lines_name_the_command_that_moves_each_on() -> None:
    text = "\n".join(Backlog(in_receiving=2, not_seen=1, failed=4, claimed=3, claiming_jobs=2).lines())
    assert "2 still in receiving/" in text and "legampi monitor" in text
    assert "1 registered but not seen" in text
    assert "4 failed" in text and "legampi process --retry-failed" in text and "legampi status" in text
    assert "3 claimed by 2 other live job(s)" in text
    assert "outside this job" not in text  # nothing ready but filtered out: no line for it


def test_read_takes_the_folders_and_the_unfinished_rows(tmp_path: Path) -> None:
    receiving, processing = tmp_path / "receiving", tmp_path / "processing"
    for folder, name in ((receiving, "d/a.c4gh"), (receiving, "d/b.c4gh"), (processing, "d/h.c4gh")):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")

    class FakeDb:
        def unfinished_files(self, columns):
            assert set(columns) <= {"file_name", "status", "claimed_by"}
            return ROWS

    cfg = SimpleNamespace(workspaces=SimpleNamespace(receiving=receiving, processing=processing))
    b = Backlog.read(FakeDb(), cfg, "job-me")  # type: ignore[arg-type]
    assert (b.in_receiving, b.not_seen, b.failed, b.claimed, b.ready) == (2, 1, 1, 3, 1)
