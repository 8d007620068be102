"""Claims on `available` files by `rekey` and `verify-archive` (issue 14), on SQLite and PostgreSQL.

The claim/skip logic (legampi.archived_claims, legampi.db.archived) against a real database: a claim
leaves the status `available`, a file held by another live job is skipped and named, never touched, and
the claims of a dead job are freed by `recover` and by the next run. Another job is a real job row: alive
(this test's own pid) or dead (the pid of a child that has exited).
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from legampi import archived_claims, backlog, config, rekey, rekey_job, verify
from legampi.db import Database
from legampi.parallel import InProcess
from tests.conftest import Workspace, make_keypair

SIZES = [1, 100, 65537, 3, 70_000, 10]


def archive_files(ws: Workspace, n: int = len(SIZES)) -> list[dict]:
    entries = [ws.add_file(f"DS1/f{i}.bam.c4gh", SIZES[i % len(SIZES)]) for i in range(n)]
    ws.legampi("register", str(ws.manifest("DS1", entries, sha256=True)), "--dataset", "DS1")
    assert f"{n} available, 0 failed" in ws.legampi("process").stdout
    return entries


@pytest.fixture
def arch(workspace: Workspace) -> Any:
    ws = workspace
    entries = archive_files(ws)
    cfg = config.load(ws.config)
    db = Database.connect(cfg.database)
    yield SimpleNamespace(ws=ws, cfg=cfg, db=db, entries=entries)
    db.close()


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def other_job(db: Database, job_id: str, command: str, alive: bool = True) -> str:
    """A job row of another run: alive (this process's pid, this host) or dead (an exited child's pid)."""
    db.job_start(job_id, command, socket.gethostname(), 1)
    if not alive:
        db.execute("UPDATE job SET pid = ? WHERE job_id = ?", (dead_pid(), job_id))
    return job_id


def ids(db: Database) -> list[str]:
    return [r["file_id"] for r in db.files(status="available")]


def claims(db: Database) -> dict[str, str]:
    return {r["file_id"]: r["claimed_by"] for r in db.archived_claims()}


def test_a_claim_keeps_available_and_is_exclusive(arch: Any) -> None:
    db = arch.db
    a, b = other_job(db, "job-a", "rekey"), other_job(db, "job-b", "verify-archive")
    every = ids(db)
    assert sorted(db.claim_archived(every[:4], a)) == sorted(every[:4])
    assert sorted(db.claim_archived(every, b)) == sorted(every[4:])  # never a file another job holds
    assert {r["status"] for r in db.files()} == {"available"}
    assert claims(db) == {**dict.fromkeys(every[:4], a), **dict.fromkeys(every[4:], b)}
    # process takes only pending/received (failed with --retry-failed): never a claimed available file
    assert db.claim(every, "job-p", retry_failed=True) == []
    # nothing waits for process: the backlog reads only unfinished files
    assert backlog.Backlog.count(db.unfinished_files(backlog.ROW_COLUMNS), [], [], "job-p").claimed == 0
    assert db.status_counts()[0]["status"] == "available" and len(db.status_counts()) == 1
    # a release gives back only the job's own claims
    assert db.release_archived(every, a) == 4
    assert claims(db) == dict.fromkeys(every[4:], b)
    assert db.release_archived(None, b) == 2 and claims(db) == {}


def test_claim_in_batches_skips_and_names_the_holder_and_reads_rows_again(arch: Any) -> None:
    db = arch.db
    rows = db.files(status="available")
    holder = other_job(db, "job-x", "rekey")
    db.claim_archived([rows[1]["file_id"]], holder)
    me = other_job(db, "job-me", "rekey")
    # another job changed a row between our listing and our claim: the claim reads it again
    db.execute("UPDATE file SET archive_key = 'NEWKEY' WHERE file_id = ?", (rows[2]["file_id"],))
    got = archived_claims.claim_in_batches(db, me, rows, 2, keep=lambda r: r["archive_key"] != "NEWKEY")
    assert [r["file_id"] for r in got.dropped] == [rows[2]["file_id"]]
    assert [r["file_id"] for r in got.rows] == [r["file_id"] for i, r in enumerate(rows) if i not in (1, 2)]
    assert [(r["file_id"], why) for r, why in got.skipped] == [
        (rows[1]["file_id"], f"claimed by job job-x (rekey, {socket.gethostname()}, pid {os.getpid()})")
    ]
    assert set(claims(db)) == {r["file_id"] for i, r in enumerate(rows) if i != 2}  # the dropped one went back
    db.release_archived(None, me)
    # WANT: stop once that many are held
    got = archived_claims.claim_in_batches(db, me, rows, 4, want=3)
    assert len(got.rows) == 3 and sorted(claims(db).values()) == ["job-me"] * 3 + ["job-x"]
    db.release_archived(None, me)
    # a file whose status changed is reported as such, not as claimed
    db.execute("UPDATE file SET status = 'failed' WHERE file_id = ?", (rows[0]["file_id"],))
    got = archived_claims.claim_in_batches(db, me, rows[:1], 5)
    assert got.skipped[0][1].startswith("no longer available")


def test_claim_book_gives_claims_back_in_batches_and_all_at_the_end(arch: Any) -> None:
    db = arch.db
    me = other_job(db, "job-me", "verify-archive")
    every = ids(db)
    db.claim_archived(every, me)
    book = archived_claims.ClaimBook(db, me, 2, 3600)
    book.done([every[0]])
    assert len(claims(db)) == len(every)  # below the batch: still held
    book.done([every[1]])
    assert set(claims(db)) == set(every[2:])
    # the heartbeat goes on while results stream in (the claims of a long job stay live)
    db.execute("UPDATE job SET heartbeat_at = '2000-01-01T00:00:00' WHERE job_id = ?", (me,))
    book.beat -= archived_claims.HEARTBEAT_INTERVAL
    book.done([every[2]])
    assert [j.heartbeat_at > "2001" for j in db.job_rows(50) if j.job_id == me] == [True]
    book.close()
    assert claims(db) == {}


def test_dead_jobs_claims_are_freed_by_recover_and_the_next_run(arch: Any) -> None:
    db, ws = arch.db, arch.ws
    every = ids(db)
    dead = other_job(db, "job-dead", "rekey", alive=False)
    live = other_job(db, "job-live", "verify-archive")
    db.claim_archived(every[:2], dead)
    db.claim_archived(every[2:3], live)
    out = ws.legampi("recover").stdout
    assert "released 2 stale claim(s)" in out and "job job-dead, rekey; still available" in out
    assert claims(db) == {every[2]: live}
    assert {r["status"] for r in db.files()} == {"available"}
    assert [r["state"] for r in db.query("SELECT state FROM job WHERE job_id = 'job-dead'")] == ["died"]
    released = db.events(event="released")
    assert len(released) == 2 and all(e["status"] == "available" for e in released)
    # and the next rekey frees them itself (no recover in between)
    dead2 = other_job(db, "job-dead-2", "rekey", alive=False)
    db.claim_archived(every[:2], dead2)
    sk, pk = make_keypair(ws.root / "keys", "archive2")
    keys = rekey.load_rekey_keys(arch.cfg, pk, sk)
    out_ = io.StringIO()
    code = rekey_job.rotate_archive(db, InProcess(rekey_job.load_rotator(keys)), arch.cfg, keys, out=out_)
    text = out_.getvalue()
    assert code == archived_claims.SKIPPED_EXIT, text  # the live holder's file is still held
    assert f"{len(every) - 1} rekeyed" in text and "1 skipped because claimed by another live job" in text
    assert f"  SKIPPED {arch.ws.end_storage / 'DS1/f2.bam.c4gh'}: claimed by job job-live (verify-archive" in text
    assert claims(db) == {every[2]: live}  # rekey gave back all its own


def test_rekey_and_verify_never_touch_a_file_another_live_job_holds(arch: Any) -> None:
    db, ws, cfg = arch.db, arch.ws, arch.cfg
    rows = {r["file_name"]: r for r in db.files()}
    victim = rows["DS1/f1.bam.c4gh"]
    path = Path(victim["archive_path"])
    holder = other_job(db, "job-rot", "rekey")
    db.claim_archived([victim["file_id"]], holder)
    # the holder is mid-rotation: the file on disk is no longer what its row says (and a marker exists)
    before = path.read_bytes()
    path.write_bytes(before[:-1] + bytes([before[-1] ^ 1]))
    rekey.pending_path(path).write_text("{}")
    out = io.StringIO()
    code = verify.verify_archive(db, InProcess(verify.load_auditor(cfg, True)), cfg, None, True, out)
    text = out.getvalue()
    assert code == archived_claims.SKIPPED_EXIT, text
    assert f"{len(rows) - 1} ok, 0 mismatch, 0 missing, 0 unexpected; 1 skipped" in text
    assert f"SKIPPED {path}: claimed by job job-rot (rekey, {socket.gethostname()}" in text
    audited = {e["file_id"] for e in db.events() if e["event"].startswith("audit-")}
    assert victim["file_id"] not in audited
    jobs = {j["command"]: j for j in db.jobs() if j["command"] == "verify-archive"}
    assert jobs["verify-archive"]["exit_status"] == archived_claims.SKIPPED_EXIT

    sk, pk = make_keypair(ws.root / "keys", "archive2")
    keys = rekey.load_rekey_keys(cfg, pk, sk)
    out = io.StringIO()
    code = rekey_job.rotate_archive(db, InProcess(rekey_job.load_rotator(keys)), cfg, keys, out=out)
    assert code == archived_claims.SKIPPED_EXIT, out.getvalue()
    assert path.read_bytes() != before and rekey.pending_path(path).read_text() == "{}"  # untouched
    assert db.file_row(victim["file_id"]).archive_key == victim["archive_key"]  # type: ignore[union-attr]
    assert claims(db) == {victim["file_id"]: holder}
    assert [j["exit_status"] for j in db.jobs() if j["command"] == "rekey" and j["job_id"] != holder] == [5]


def test_verify_decrypt_during_a_rotation_does_not_call_files_on_the_new_key_corrupt(arch: Any) -> None:
    db, ws, cfg = arch.db, arch.ws, arch.cfg
    sk, pk = make_keypair(ws.root / "keys", "archive2")
    keys = rekey.load_rekey_keys(cfg, pk, sk)
    out = io.StringIO()
    assert rekey_job.rotate_archive(db, InProcess(rekey_job.load_rotator(keys)), cfg, keys, limit=2, out=out) == 0
    out = io.StringIO()
    code = verify.verify_archive(db, InProcess(verify.load_auditor(cfg, True)), cfg, None, True, out)
    text = out.getvalue()
    assert code == archived_claims.SKIPPED_EXIT, text
    n = len(arch.entries)
    assert f"{n} ok, 0 mismatch, 0 missing, 0 unexpected; 0 skipped" in text
    assert "2 not decrypted (archived for another key)" in text and text.count("  NOT DECRYPTED ") == 2
    assert f"archived for key {keys.new_fp}, the configured archive secret key is for {keys.old_fp}" in text


def drain(c: archived_claims.ArchivedClaims, workers: int = 1) -> list[list[str]]:
    """Every batch the lazy source gives, as file ids, until it gives none."""
    out = []
    while batch := c.more(workers):
        out.append([r["file_id"] for r in batch])
    return out


def test_archived_claims_take_a_batch_at_a_time_and_try_a_held_file_again_at_the_end(arch: Any) -> None:
    db = arch.db
    rows = db.files(status="available")
    every = [r["file_id"] for r in rows]
    holder = other_job(db, "job-x", "verify-archive")
    db.claim_archived([every[0]], holder)  # held from before we start: set aside, not skipped yet
    me = other_job(db, "job-me", "rekey")
    c = archived_claims.ArchivedClaims(db, me, rows, most=2)
    assert [r["file_id"] for r in c.more(1)] == every[1:3]  # a worker's first queue, not every file
    assert claims(db) == {every[0]: holder, every[1]: me, every[2]: me} and list(c.later) == [every[0]]
    db.release_archived(None, holder)  # the audit lets it go while we work: ours by the end
    assert drain(c) == [every[3:5], every[5:], every[:1]]
    assert c.finish() == [] and c.skipped == [] and len(c.rows) == len(every)
    db.release_archived(None, me)
    # LIMIT reached: a file set aside is not wanted, so not skipped
    db.claim_archived([every[0]], holder)
    c = archived_claims.ArchivedClaims(db, me, rows, limit=3)
    assert drain(c, 4) == [every[1:4]] and c.finish() == [] and c.skipped == []


def test_a_file_an_audit_alongside_holds_is_its_part_one_held_from_before_is_skipped(arch: Any) -> None:
    db = arch.db
    rows = db.files(status="available")
    every = [r["file_id"] for r in rows]
    stale = other_job(db, "job-old", "verify-archive")
    db.claim_archived([every[0]], stale)  # from before we started: not a run alongside ours
    me = other_job(db, "job-me", "verify-archive")
    c = archived_claims.ArchivedClaims(db, me, rows, shared="verify-archive")
    alongside = other_job(db, "job-b", "verify-archive")
    db.claim_archived(every[1:3], alongside)
    assert sum(drain(c, 4), []) == every[3:]
    assert [r["file_id"] for r, _why in c.theirs] == every[1:3]  # audited by job-b, never by us
    assert c.finish() == []
    assert [(r["file_id"], why.split(" (")[0]) for r, why in c.skipped] == [(every[0], "claimed by job job-old")]


def test_a_rekey_waits_for_the_files_a_rotation_alongside_holds_and_takes_those_it_let_go(arch: Any) -> None:
    db = arch.db
    rows = db.files(status="available")
    every = [r["file_id"] for r in rows]
    me = other_job(db, "job-me", "rekey")
    c = archived_claims.ArchivedClaims(db, me, rows, keep=lambda r: r["archive_key"] != "NEWKEY")
    other = other_job(db, "job-b", "rekey")
    db.claim_archived(every[:2], other)
    assert sum(drain(c, 4), []) == every[2:]
    db.release_archived(every[2:], me)  # done: ours back before we wait

    steps = iter(
        [  # what the other rotation does while we wait: rotates one, then lets the other go unrotated
            lambda: db.execute("UPDATE file SET archive_key = 'NEWKEY' WHERE file_id = ?", (every[0],)),
            lambda: db.release_archived(every[:1], other),
            lambda: db.release_archived(every[1:2], other),
        ]
    )
    last = c.finish("rekey", patience=600, tick=lambda: next(steps, lambda: None)())
    assert [r["file_id"] for r in last] == every[1:2]  # not on the new key: ours to do, here
    assert [r["file_id"] for r in c.dropped] == every[:1]
    assert claims(db) == {every[1]: me}
    db.release_archived(None, me)  # done here: given back before the next call
    assert c.finish("rekey", patience=600) == [] and c.skipped == []
    # a rotation alongside that lets nothing go: skipped once PATIENCE passes without a release
    c = archived_claims.ArchivedClaims(db, me, rows[2:3])
    db.claim_archived(every[2:3], other)
    assert drain(c) == [] and c.finish("rekey", patience=0.5) == []
    assert [(r["file_id"], why.split(" (")[0]) for r, why in c.skipped] == [(every[2], "claimed by job job-b")]


def test_rekey_rotates_itself_a_file_a_rotation_alongside_let_go_unrotated(arch: Any, monkeypatch: Any) -> None:
    """The other rotation claims a file after ours started, then lets it go without rotating it (it failed
    or died): ours waits for it, then rotates it on rank 0, and exits 0 with every file on the new key."""
    import time

    db, ws, cfg = arch.db, arch.ws, arch.cfg
    every = ids(db)
    other = other_job(db, "job-b", "rekey")

    class Alongside(InProcess):
        def run(self, tasks: Any, on_result: Any, **kw: Any) -> None:
            db.claim_archived(every[:1], other)  # after our job started: a run alongside ours
            super().run(tasks, on_result, **kw)

    waits = []

    def pause(seconds: float) -> None:  # the other run lets the file go while ours waits
        waits.append(seconds)
        db.release_archived(every[:1], other)

    monkeypatch.setattr(archived_claims, "time", SimpleNamespace(monotonic=time.monotonic, sleep=pause))
    sk, pk = make_keypair(ws.root / "keys", "archive2")
    keys = rekey.load_rekey_keys(cfg, pk, sk)
    out = io.StringIO()
    code = rekey_job.rotate_archive(db, Alongside(rekey_job.load_rotator(keys, 1)), cfg, keys, out=out)
    text = out.getvalue()
    assert code == 0 and len(waits) == 1, text
    assert f"{len(every)} rekeyed" in text and "0 skipped because claimed" in text
    assert text.count("(rank 0, ") == 1 and text.count("(rank 1, ") == len(every) - 1  # the let-go one here
    assert {r["archive_key"] for r in db.files()} == {keys.new_fp} and claims(db) == {}
