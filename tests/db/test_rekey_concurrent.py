"""Real `legampi rekey` and `verify-archive` processes at the same time over one archive (issue 14).

Many small files and claims in batches of at most 5 (`batch_size`) make the runs overlap: two rekeys
started together each rotate a share and both exit 0 (each waits for the files the other holds at its
end), two audits each audit a share, an audit meets files mid-rotation. Whatever the interleaving, every
file is re-keyed exactly once, decrypts with the new key to its registered md5, and nothing is reported
corrupt; a SIGKILLed rekey's claims are taken over by the next run. Both backends.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from types import SimpleNamespace

from legampi import config
from legampi.db import Database
from legampi.formats.crypt4gh import decrypt_stream
from legampi.keys import fingerprint, load_public_key, load_secret_key
from tests.conftest import BIN, Workspace, make_keypair

N = 60
C4GH = str(BIN / "crypt4gh")
LEGAMPI = str(BIN / "legampi")


def archived(ws: Workspace) -> list[dict]:
    """N small files archived by the real `legampi process`; claims and flushes in batches of 5."""
    ws.config.write_text(ws.config.read_text().replace("batch_size = 50", "batch_size = 5"))
    entries = [ws.add_file(f"DS1/d{i % 3}/f{i:03d}.bam.c4gh", 50 + 37 * i) for i in range(N)]
    ws.legampi("register", str(ws.manifest("DS1", entries, sha256=True)), "--dataset", "DS1")
    assert f"{N} available, 0 failed" in ws.legampi("process", timeout=300).stdout
    return entries


def new_key(ws: Workspace) -> SimpleNamespace:
    sk, pk = make_keypair(ws.root / "keys", "archive2")
    return SimpleNamespace(sk=sk, pk=pk, fp=fingerprint(load_public_key(pk)))


def rekey_cmd(ws: Workspace, key: SimpleNamespace) -> list[str]:
    return [
        LEGAMPI, "-c", str(ws.config), "rekey",
        "--new-archive-public-key", str(key.pk), "--new-archive-secret-key", str(key.sk),
    ]  # fmt: skip


def start(cmd: list[str], ws: Workspace) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ws.root)


def open_db(ws: Workspace) -> Database:
    return Database.connect(config.load(ws.config).database)


def assert_rotated_once(ws: Workspace, entries: list[dict], key: SimpleNamespace) -> None:
    """Every file re-keyed exactly once, on the new key, decrypting to its md5; no claim left behind."""
    db = open_db(ws)
    try:
        rows = {r["file_name"]: r for r in db.files()}
        rekeyed = [e["file_id"] for e in db.events(event="rekeyed")]
        assert sorted(rekeyed) == sorted(rows[e["name"]]["file_id"] for e in entries), "each exactly once"
        assert db.archived_claims() == []
        assert db.running_jobs() == []
    finally:
        db.close()
    sk = load_secret_key(key.sk, None)
    for e in entries:
        r, path = rows[e["name"]], ws.end_storage / e["name"]
        assert r["archive_key"] == key.fp and r["status"] == "available"
        assert r["archive_checksum"] == hashlib.sha256(path.read_bytes()).hexdigest()
        with open(path, "rb") as fh:
            plain = b"".join(decrypt_stream(fh, sk, label=str(path)))
        assert hashlib.md5(plain).hexdigest() == r["md5"] == e["md5"]
    for e in entries[:: N // 3]:  # and what any GA4GH reader sees
        with open(ws.end_storage / e["name"], "rb") as fh:
            got = subprocess.run(
                [C4GH, "decrypt", "--sk", str(key.sk)],
                stdin=fh,
                capture_output=True,
                timeout=60,
                env=dict(os.environ, C4GH_PASSPHRASE=""),
            )
        assert got.returncode == 0 and hashlib.md5(got.stdout).hexdigest() == e["md5"], got.stderr
    assert not [p for p in ws.end_storage.rglob("*") if p.name.endswith(".rekey")]


def count(pattern: str, text: str) -> int:
    m = re.search(pattern, text)
    assert m, text
    return int(m.group(1))


def test_two_rekeys_at_once_rotate_every_file_exactly_once(workspace: Workspace) -> None:
    ws = workspace
    entries = archived(ws)
    key = new_key(ws)
    procs = [start(rekey_cmd(ws, key), ws) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    text = "\n".join(o + e for o, e in outs)
    assert [p.returncode for p in procs] == [0, 0], text  # the other run's share is no reason to rerun
    assert "FAILED" not in text and "Traceback" not in text
    rekeyed = [count(r"(\d+) rekeyed", o) for o, _ in outs]
    already = [count(r"(\d+) already on the new key", o) for o, _ in outs]
    assert [count(r"(\d+) skipped because claimed", o) for o, _ in outs] == [0, 0], text
    assert sum(rekeyed) == N and all(rekeyed), f"each rotates a share: {rekeyed}"
    # each run accounts for every file: rotated by itself, or found on the new key (the other's share)
    assert [r + a for r, a in zip(rekeyed, already, strict=True)] == [N, N], text
    print(f"rekeyed {rekeyed}, already on the new key {already}")
    assert_rotated_once(ws, entries, key)
    ws.config.write_text(ws.config.read_text().replace(str(ws.archive_sk), str(key.sk)))
    assert f"{N} ok, 0 mismatch, 0 missing, 0 unexpected; 0 skipped" in ws.legampi("verify-archive", "--decrypt").stdout


def test_two_audits_at_once_each_audit_a_share(workspace: Workspace) -> None:
    ws = workspace
    archived(ws)
    cmd = [LEGAMPI, "-c", str(ws.config), "verify-archive", "--decrypt"]
    procs = [start(cmd, ws) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    text = "\n".join(o + e for o, e in outs)
    assert [p.returncode for p in procs] == [0, 0], text
    for word in ("MISMATCH", "MISSING", "UNEXPECTED", "Traceback", "NOT DECRYPTED"):
        assert word not in text, text
    ok = [count(r"(\d+) ok, 0 mismatch, 0 missing, 0 unexpected; 0 skipped", o) for o, _ in outs]
    theirs = [int(m.group(1)) if (m := re.search(r"(\d+) audited by another audit", o)) else 0 for o, _ in outs]
    assert all(ok) and [a + b for a, b in zip(ok, theirs, strict=True)] == [N, N], text
    print(f"audited {ok}, left to the other audit {theirs}")
    db = open_db(ws)
    try:
        audited = {e["file_id"] for e in db.events(event="audit-ok")}
        assert audited == {r["file_id"] for r in db.files()} and db.archived_claims() == []
    finally:
        db.close()


def test_verify_archive_during_a_rekey_reports_no_false_corruption(workspace: Workspace) -> None:
    ws = workspace
    entries = archived(ws)
    key = new_key(ws)
    rot = start(rekey_cmd(ws, key), ws)
    audits, deadline = [], time.monotonic() + 600
    while (rot.poll() is None or not audits) and time.monotonic() < deadline:
        # every other audit decrypts too (with the old key: the files rotated already are not decrypted)
        v = ws.legampi("verify-archive", *(["--decrypt"] if len(audits) % 2 else []), check=False, timeout=300)
        assert v.returncode in (0, 5), v.stdout + v.stderr
        for word in ("MISMATCH", "MISSING", "UNEXPECTED", "Traceback"):
            assert word not in v.stdout + v.stderr, v.stdout + v.stderr
        audits.append((count(r"(\d+) ok", v.stdout), count(r"(\d+) skipped because claimed", v.stdout)))
        assert sum(audits[-1]) == N, v.stdout
        # the rekey holds a batch ahead (<= batch_size) and a flush behind, never the archive
        assert audits[-1][1] <= 2 * 5, v.stdout
    out, err = rot.communicate(timeout=600)
    assert rot.returncode in (0, 5), out + err
    print(f"audits during the rekey (ok, skipped): {audits}; rekey: {out.splitlines()[-2:]}")
    if rot.returncode == 5:  # an audit held some files when the rekey claimed: the rerun rotates them
        ws.legampi("rekey", "--new-archive-public-key", str(key.pk), "--new-archive-secret-key", str(key.sk))
    assert_rotated_once(ws, entries, key)
    assert f"{N} ok" in ws.legampi("verify-archive").stdout


def test_a_killed_rekeys_claims_are_taken_over_by_the_next_run(workspace: Workspace) -> None:
    ws = workspace
    entries = archived(ws)
    key = new_key(ws)
    rot = start(rekey_cmd(ws, key), ws)
    db = open_db(ws)
    try:
        deadline, held = time.monotonic() + 120, []
        while not held and rot.poll() is None and time.monotonic() < deadline:
            held = [c for c in db.archived_claims() if c["command"] == "rekey"]
        assert held, "the rekey never held a claim"
        os.kill(rot.pid, signal.SIGKILL)
        rot.communicate(timeout=60)
        dead_job = held[0]["claimed_by"]
        left = [c for c in db.archived_claims() if c["claimed_by"] == dead_job]
        print(f"killed rekey {dead_job} held {len(left)} claim(s)")
    finally:
        db.close()
    again = ws.legampi(*rekey_cmd(ws, key)[3:], timeout=300)
    assert "FAILED" not in again.stdout and " 0 skipped because claimed" in again.stdout
    assert_rotated_once(ws, entries, key)
    db = open_db(ws)
    try:
        assert [j.state for j in db.job_rows(50) if j.job_id == dead_job] == ["died"]
    finally:
        db.close()
    assert f"{N} ok, 0 mismatch, 0 missing, 0 unexpected" in ws.legampi("verify-archive").stdout
