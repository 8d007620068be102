"""Issue 17: the backlog a `process` job that claims nothing prints, read from a real tracking database."""

from __future__ import annotations

from types import SimpleNamespace

from legampi.backlog import Backlog
from tests.conftest import Workspace


def test_backlog_reads_the_database_and_the_folders(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    arriving = ws.add_file("d/arriving.c4gh", 100, where="receiving")
    man = ws.metadata / "EGAD1.tab"
    man.write_text(f"{arriving['name']}\t{arriving['md5']}\nd/nowhere.c4gh\t{'1' * 32}\nd/bad.c4gh\t{'2' * 32}\n")
    dbh.ok(ws, "register", str(man))
    dbh.ok(ws, "update", "d/bad.c4gh", "failed", "--reason", "test")
    db = dbh.connect(ws.db_url)
    cfg = SimpleNamespace(workspaces=SimpleNamespace(receiving=ws.receiving, processing=ws.processing))
    b = Backlog.read(db, cfg, "job-me")  # type: ignore[arg-type]
    assert (b.in_receiving, b.not_seen, b.failed, b.claimed, b.ready) == (1, 1, 1, 0, 0)


def test_process_with_nothing_to_claim_says_what_waits_where(workspace: Workspace, dbh: SimpleNamespace) -> None:
    """The real command: an empty processing/ gets a breakdown with the commands that move things on."""
    ws = workspace
    arriving = ws.add_file("d/arriving.c4gh", 100, where="receiving")
    man = ws.metadata / "EGAD2.tab"
    man.write_text(f"{arriving['name']}\t{arriving['md5']}\n")
    dbh.ok(ws, "register", str(man))
    out = ws.mpi(2, "process").stdout
    assert "0 file(s)" in out and "1 still in receiving/" in out and "`legampi monitor` moves them" in out, out
