"""Secrets stay secret, plaintext never reaches disk, archived files are not world-readable, unsafe keys
are refused, and SQL is parameterised (a hostile file name archives like any other)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tests.conftest import make_keypair
from tests.faults.conftest import (
    all_files,
    assert_safe,
    closed_port,
    dump_db,
    register,
    rows_by_name,
    set_options,
    status_json,
    tree_snapshot,
)

INBOX_PASS = "inbox-Pass-7f3a9c"
DB_PASS = "db-Pass-41d0e2"
API_PASS = "api-Pass-93bb17"
LEGACY_PASS = "legacy-Pass-c5e862"
WRONG_PASS = "wrong-Pass-0a6d3f"
SECRETS = (INBOX_PASS, DB_PASS, API_PASS, LEGACY_PASS, WRONG_PASS)


def _cip(path: Path, plain: bytes, password: str) -> None:
    """A legacy EGA .cip file: 16-byte IV, AES-128-CTR, key from PBKDF2-HMAC-SHA1 (the seed's scheme)."""
    key = hashlib.pbkdf2_hmac("sha1", password.encode(), bytes.fromhex("f42201009edf4e15"), 1024, 16)
    iv = os.urandom(16)
    enc = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    path.write_bytes(iv + enc.update(plain) + enc.finalize())


def _entry(name: str, plain: bytes) -> dict:
    return {
        "name": name,
        "md5": hashlib.md5(plain).hexdigest(),
        "sha256": hashlib.sha256(plain).hexdigest(),
        "size": 0,
        "plain": plain,
    }


def test_no_secret_in_logs_errors_reports_or_database(workspace) -> None:
    ws = workspace
    make_keypair(ws.root / "keys", "inbox", passphrase=INBOX_PASS)  # replaces the unlocked inbox key
    (ws.root / "keys" / "db.pass").write_text(DB_PASS + "\n")
    os.chmod(ws.root / "keys" / "db.pass", 0o600)
    set_options(
        ws,
        database={"passwd_file": ws.root / "keys" / "db.pass"},
        api={"api_url": f"http://127.0.0.1:{closed_port()}/datasets/DATASETID/files", "api_user": "u", "retries": 0},
    )
    env = {
        "LEGAMPI_INBOX_PASSPHRASE": INBOX_PASS,
        "LEGAMPI_API_PASSWORD": API_PASS,
        "LEGAMPI_LEGACY_PASSWORD": LEGACY_PASS,
    }
    plain = os.urandom(70_000)
    _cip(ws.processing / "legacy.bam.cip", plain, LEGACY_PASS)
    wrong = os.urandom(70_000)
    _cip(ws.processing / "wrongpass.bam.cip", wrong, WRONG_PASS)
    files = [ws.add_file("a.bam.c4gh", 90_000), _entry("legacy.bam.cip", plain), _entry("wrongpass.bam.cip", wrong)]
    register(ws, "DS1", files)
    log = ws.root / "legampi.log"
    outputs = []

    p = ws.mpi(3, "--log-level", "debug", "--log-file", str(log), "process", check=False, env=env)
    outputs.append(p.stdout + p.stderr)
    assert p.returncode == 1, p.stdout + p.stderr
    rows = rows_by_name(ws)
    assert rows["a.bam.c4gh"]["status"] == rows["legacy.bam.cip"]["status"] == "available"
    assert "md5 mismatch" in rows["wrongpass.bam.cip"]["error"]

    bad = ws.mpi(
        3,
        "--log-level",
        "debug",
        "--log-file",
        str(log),
        "process",
        "--retry-failed",
        check=False,
        env=dict(env, LEGAMPI_INBOX_PASSPHRASE=WRONG_PASS),
    )
    outputs.append(bad.stdout + bad.stderr)
    assert bad.returncode == 2 and "wrong passphrase" in bad.stderr, bad.stderr
    api = ws.legampi("--log-level", "debug", "--log-file", str(log), "fetch-metadata", "EGAD1", check=False, env=env)
    outputs.append(api.stdout + api.stderr)
    assert api.returncode != 0 and "EGAD1" in api.stderr, api.stderr
    for args in (["status", "--json"], ["status"], ["report", "-o", str(ws.root / "report.html")]):
        p = ws.legampi("--log-level", "debug", *args, env=env)
        outputs.append(p.stdout + p.stderr)
    set_options(ws, database={"url": f"postgresql://postgres@127.0.0.1:{closed_port()}/test"})
    nodb = ws.legampi("--log-level", "debug", "status", check=False, env=env)
    outputs.append(nodb.stdout + nodb.stderr)
    assert nodb.returncode != 0 and "cannot connect" in nodb.stderr, nodb.stderr
    set_options(ws, database={"url": ws.db_url})
    outputs += [log.read_text(), (ws.root / "report.html").read_text(), dump_db(ws)]
    text = "\n".join(outputs)
    assert "a.bam.c4gh" in text and "wrongpass.bam.cip" in dump_db(ws)
    for secret in SECRETS:
        assert secret not in text, f"secret {secret!r} leaked"
    for path in all_files(ws.root):  # nothing else on disk holds them either (except the password file)
        if path.name != "db.pass":
            data = path.read_bytes()
            assert not any(s.encode() in data for s in SECRETS), f"a secret was written to {path}"


def _plaintext_on_disk(root: Path, plains: list[bytes]) -> list[str]:
    """Files under ROOT holding any 64-byte window of any plaintext (8-byte word match, then confirmed)."""
    words = np.unique(
        np.concatenate(
            [
                np.lib.stride_tricks.sliding_window_view(np.frombuffer(p, np.uint8), 8).copy().view(np.uint64).ravel()
                for p in plains
            ]
        )
    )
    found = []
    for path in all_files(root):
        data = path.read_bytes()
        for shift in range(8):
            n = (len(data) - shift) // 8
            if n <= 0:
                continue
            arr = np.frombuffer(data, np.uint64, n, shift)
            hits = np.nonzero(words[np.minimum(np.searchsorted(words, arr), len(words) - 1)] == arr)[0]
            for h in hits:
                off = shift + 8 * int(h)
                windows = (data[s : s + 64] for s in range(max(0, off - 56), off + 1))
                if any(len(w) == 64 and any(w in p for p in plains) for w in windows):
                    found.append(str(path))
                    break
            if found and found[-1] == str(path):
                break
    return found


def test_plaintext_never_written_to_disk(workspace) -> None:
    ws = workspace
    files = [ws.add_file(f"p{i}.bam.c4gh", 150_000 + i) for i in range(4)]
    bad = ws.add_file("mismatch.bam.c4gh", 120_000)
    bad["md5"] = hashlib.md5(b"other").hexdigest()
    bad["sha256"] = ""
    register(ws, "DS1", files + [bad])
    ws.mpi(3, "--log-level", "debug", "--log-file", str(ws.root / "run.log"), "process", check=False)
    ws.legampi("report", "-o", str(ws.root / "report.html"))
    plains = [e["plain"] for e in files + [bad]]
    # the check can fail: a copy of a plaintext slice is found
    (ws.root / "probe").write_bytes(b"xx" + plains[2][1000:1064] + b"yy")
    everything = ws.root.parent  # the workspace, logs, report and the SQLite database with its WAL
    assert _plaintext_on_disk(everything, plains) == [str(ws.root / "probe")]
    (ws.root / "probe").unlink()
    assert _plaintext_on_disk(everything, plains) == []
    assert_safe(ws, files, complete=True)


def test_archived_files_have_the_configured_mode(workspace) -> None:
    ws = workspace
    one = [ws.add_file("m1.bam.c4gh", 10_000), ws.add_file("sub/m2.bam.c4gh", 10_000)]
    register(ws, "DS1", one)
    ws.mpi(3, "process")
    set_options(ws, crypto={"file_mode": "0600"})
    two = [ws.add_file("m3.bam.c4gh", 10_000)]
    register(ws, "DS2", two)
    ws.legampi("process")
    assert_safe(ws, one + two, complete=True)
    for e, mode in [(one[0], 0o640), (one[1], 0o640), (two[0], 0o600)]:
        final = ws.end_storage / e["name"]
        for p in (final, final.with_name(final.name + ".sha256")):
            assert p.stat().st_mode & 0o777 == mode, f"{p}: mode {p.stat().st_mode & 0o777:o}, want {mode:o}"
    assert (ws.end_storage / "sub").stat().st_mode & 0o007 == 0, "archive folder open to others"


def test_secret_key_readable_by_others_is_refused(workspace) -> None:
    ws = workspace
    files = [ws.add_file("k.bam.c4gh", 10_000)]
    register(ws, "DS1", files)
    before, rows = tree_snapshot(ws.processing), rows_by_name(ws)
    for mode in (0o640, 0o604):
        os.chmod(ws.inbox_sk, mode)
        for ranks in (0, 3):
            cmd = ["process"] if ranks == 0 else []
            p = ws.legampi(*cmd, check=False) if ranks == 0 else ws.mpi(3, "process", check=False)
            assert p.returncode == 2, f"{p.returncode}\n{p.stdout}\n{p.stderr}"
            assert str(ws.inbox_sk) in p.stderr and "chmod 600" in p.stderr, p.stderr
    assert tree_snapshot(ws.processing) == before
    assert not list(all_files(ws.end_storage))
    assert rows_by_name(ws) == rows, "a refused job changed the database"
    os.chmod(ws.inbox_sk, 0o600)
    ws.legampi("process")
    assert_safe(ws, files, complete=True)


def test_hostile_names_are_plain_data(workspace) -> None:
    ws = workspace
    files = [
        ws.add_file("x'; DROP TABLE file; --.bam.c4gh", 20_000),
        ws.add_file('q"; DELETE FROM file_event; --/y.bam.c4gh', 20_000),
    ]
    ds = "DS'); DROP TABLE dataset_log; --"
    register(ws, ds, files)
    ws.mpi(3, "process")
    assert_safe(ws, files, complete=True)
    data = status_json(ws)
    assert [d["dataset_id"] for d in data["datasets"]] == [ds]
    assert {f["file_name"] for f in data["files"]} == {e["name"] for e in files}
    out = subprocess.run(["ls", "-R", str(ws.end_storage)], capture_output=True, text=True).stdout
    assert "DROP TABLE file" in out
