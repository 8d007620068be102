"""Bad inputs through the real commands: each bad file fails alone with a clear reason, good ones archive,
bad manifests are refused whole, and the monitor never moves a symlink or a file still being written."""

from __future__ import annotations

import hashlib
import json
import os

from legampi.formats.crypt4gh import encrypt_stream
from legampi.keys import load_public_key
from tests.conftest import make_keypair
from tests.faults.conftest import assert_safe, events, register, rows_by_name, status_json


def _error_lines(stderr: str, name: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line and name in line]


def test_bad_files_fail_alone_with_a_reason(workspace) -> None:
    ws = workspace
    good = [ws.add_file("with space ü.bam.c4gh", 150_000), ws.add_file("sub dir/ñandú 測試.bam.c4gh", 70_000)]

    md5bad = ws.add_file("md5bad.bam.c4gh", 100_000)
    md5bad["md5"] = hashlib.md5(b"something else").hexdigest()

    flipped = ws.add_file("flipped.bam.c4gh", 200_000)
    path = ws.processing / "flipped.bam.c4gh"
    raw = bytearray(path.read_bytes())
    raw[100_000] ^= 0x10  # inside a middle segment: corruption, not truncation
    path.write_bytes(bytes(raw))

    truncated = ws.add_file("truncated.bam.c4gh", 200_000)
    path = ws.processing / "truncated.bam.c4gh"
    os.truncate(path, path.stat().st_size * 6 // 10)

    other_sk, other_pk = make_keypair(ws.root, "other")
    plain = os.urandom(50_000)
    with open(ws.processing / "wrongkey.bam.c4gh", "wb") as fh:
        for chunk in encrypt_stream([plain], load_public_key(other_pk)):
            fh.write(chunk)
    wrongkey = {
        "name": "wrongkey.bam.c4gh",
        "md5": hashlib.md5(plain).hexdigest(),
        "sha256": hashlib.sha256(plain).hexdigest(),
        "size": 0,
    }

    (ws.processing / "empty.bam.c4gh").write_bytes(b"")
    empty = {
        "name": "empty.bam.c4gh",
        "md5": hashlib.md5(b"").hexdigest(),
        "sha256": hashlib.sha256(b"").hexdigest(),
        "size": 0,
    }
    stray = ws.add_file("unregistered.bam.c4gh", 1000)

    bad = {
        "md5bad.bam.c4gh": ("checksum", "plaintext md5 mismatch"),
        "flipped.bam.c4gh": ("corrupt", "fails authentication"),
        "truncated.bam.c4gh": ("truncated", "truncated.bam.c4gh"),
        "wrongkey.bam.c4gh": ("key", "inbox secret key"),
        "empty.bam.c4gh": ("truncated", "empty file"),
    }
    entries = good + [md5bad, flipped, truncated, wrongkey, empty]
    register(ws, "DS1", entries)
    p = ws.mpi(3, "process", check=False)
    assert p.returncode == 1, f"{p.stdout}\n{p.stderr}"

    files = {f["file_name"]: f for f in status_json(ws)["files"]}
    details = {e["file_id"]: e["details"] for e in events(ws, "failed")}
    for name, (kind, words) in bad.items():
        f = files[name]
        assert f["status"] == "failed", f
        assert name in f["error"] and words in f["error"], f"{name}: reason {f['error']!r} lacks {words!r}"
        assert details[name].startswith(f"{kind}: "), f"{name}: failure kind {details[name]!r}, want {kind}"
        assert _error_lines(p.stderr, name), f"no ERROR log line names {name}:\n{p.stderr}"
        assert (ws.processing / name).is_file(), f"{name}: failed source removed"
        assert f"FAILED {name}" in p.stdout, p.stdout
    for e in good:
        assert files[e["name"]]["status"] == "available"
    assert (ws.processing / stray["name"]).read_bytes(), "unregistered file touched"
    assert "unregistered" in p.stderr and stray["name"] in p.stderr, p.stderr
    assert stray["name"] not in rows_by_name(ws)
    assert_safe(ws, entries)
    for e in good:
        assert not (ws.processing / e["name"]).exists()


def test_bad_manifests_are_refused_whole(workspace) -> None:
    ws = workspace
    first = ws.add_file("dup.bam.c4gh", 1000, where="receiving")
    register(ws, "DS1", [first])

    newer = ws.add_file("new.bam.c4gh", 1000, where="receiving")
    ws.manifest("DS2", [newer, first])
    p = ws.legampi("register", str(ws.metadata / "DS2.tab"), check=False)
    assert p.returncode != 0 and "dup.bam.c4gh" in p.stderr and "DS1" in p.stderr, p.stderr
    assert set(rows_by_name(ws)) == {"dup.bam.c4gh"}, "part of a refused manifest was registered"

    evil = dict(newer, name="../evil.bam.c4gh")
    ws.manifest("DS3", [newer, evil])
    p = ws.legampi("register", str(ws.metadata / "DS3.tab"), check=False)
    assert p.returncode != 0 and "'..'" in p.stderr and "DS3.tab:2" in p.stderr, p.stderr
    assert set(rows_by_name(ws)) == {"dup.bam.c4gh"}

    ega = [{"fileId": "EGAF01", "fileName": "ega1.bam.c4gh", "fileMd5": first["md5"], "datasetId": "EGAD1"}]
    (ws.metadata / "EGAD1.json").write_text(json.dumps(ega))
    ws.legampi("register", str(ws.metadata / "EGAD1.json"))
    ega[0]["datasetId"] = "EGAD2"
    (ws.metadata / "EGAD2.json").write_text(json.dumps(ega))
    p = ws.legampi("register", str(ws.metadata / "EGAD2.json"), check=False)
    assert p.returncode != 0 and "EGAF01" in p.stderr and "EGAD1" in p.stderr, p.stderr
    assert {r["dataset_id"] for r in rows_by_name(ws).values()} == {"DS1", "EGAD1"}


def test_monitor_never_moves_symlinks_or_growing_files(workspace) -> None:
    ws = workspace
    outside = ws.root / "outside"
    outside.mkdir()
    target = outside / "secret.bam.c4gh"
    target.write_bytes(b"not for the archive")
    (ws.receiving / "link.bam.c4gh").symlink_to(target)
    link = {"name": "link.bam.c4gh", "md5": hashlib.md5(b"x").hexdigest(), "sha256": None, "size": 0}
    growing = ws.add_file("growing.bam.c4gh", 5000, where="receiving")
    touched = ws.add_file("touched.bam.c4gh", 5000, where="receiving")
    steady = ws.add_file("steady.bam.c4gh", 5000, where="receiving")
    ws.manifest("DS1", [link, growing, touched, steady])
    ws.legampi("register", str(ws.metadata / "DS1.tab"))
    mtime = (ws.receiving / "touched.bam.c4gh").stat().st_mtime
    for n in range(1, 7):
        p = ws.legampi("monitor")
        assert "link.bam.c4gh" in p.stderr and "symbolic link" in p.stderr, p.stderr
        with open(ws.receiving / "growing.bam.c4gh", "ab") as fh:
            fh.write(b"more")
        os.utime(ws.receiving / "touched.bam.c4gh", (mtime + n, mtime + n))
    rows = rows_by_name(ws)
    assert (ws.processing / "steady.bam.c4gh").is_file(), "control: a finished file was never moved"
    assert rows["steady.bam.c4gh"]["status"] == "received"
    for name in ("link.bam.c4gh", "growing.bam.c4gh", "touched.bam.c4gh"):
        assert rows[name]["status"] == "pending", rows[name]
        assert not (ws.processing / name).exists() and not (ws.processing / name).is_symlink(), name
    assert (ws.receiving / "link.bam.c4gh").is_symlink()
    assert target.read_bytes() == b"not for the archive"
    assert (ws.receiving / "growing.bam.c4gh").stat().st_size == growing["size"] + 4 * 6
