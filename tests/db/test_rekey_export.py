"""`legampi rekey` (archive key rotation) and `legampi export` (a dataset for a researcher), both backends.

Files are archived by the real `legampi process`; every decryption check uses the `crypt4gh` CLI, so the
result is what any GA4GH reader would see. Crashes are simulated deterministically: `--limit` stops a run
midway, and calling the per-file work function without recording stands for a job killed between the
rename and the database commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from legampi import archive, rekey
from legampi.config import load
from legampi.keys import fingerprint, load_public_key
from tests.conftest import BIN, Workspace, make_keypair

C4GH = str(BIN / "crypt4gh")
SIZES = [1, 65536, 65537, 150_000]  # one byte, exactly one segment, one more, a few segments


def archived(ws: Workspace, ds: str = "DS1", sizes: list[int] = SIZES) -> list[dict]:
    """Register and archive small files with the real `legampi process` (one rank)."""
    entries = [ws.add_file(f"{ds}/sub{i % 2}/f{i}.bam.c4gh", size) for i, size in enumerate(sizes)]
    ws.legampi("register", str(ws.manifest(ds, entries, sha256=True)), "--dataset", ds)
    out = ws.legampi("process").stdout
    assert f"{len(sizes)} available, 0 failed" in out
    for e in entries:
        e["archived"] = ws.end_storage / e["name"]
    return entries


def c4gh_decrypt(sk: Path, path: Path) -> subprocess.CompletedProcess[bytes]:
    with open(path, "rb") as fh:
        return subprocess.run(
            [C4GH, "decrypt", "--sk", str(sk)],
            stdin=fh,
            capture_output=True,
            timeout=60,
            env=dict(os.environ, C4GH_PASSPHRASE=""),
        )


def header_size(data: bytes) -> int:
    count = int.from_bytes(data[12:16], "little")
    off = 16
    for _ in range(count):
        off += int.from_bytes(data[off : off + 4], "little")
    return off


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def rows(dbh: SimpleNamespace, ws: Workspace) -> dict[str, dict]:
    db = dbh.connect(ws.db_url)
    try:
        return {r["file_name"]: r for r in db.files()}
    finally:
        db.close()


def events(dbh: SimpleNamespace, ws: Workspace, event: str) -> list[dict]:
    db = dbh.connect(ws.db_url)
    try:
        return db.events(event=event)
    finally:
        db.close()


def new_key(ws: Workspace, name: str = "archive2") -> SimpleNamespace:
    sk, pk = make_keypair(ws.root / "keys", name)
    return SimpleNamespace(sk=sk, pk=pk, fp=fingerprint(load_public_key(pk)))


def leftovers(ws: Workspace) -> list[str]:
    """Temp files and pending markers: none may remain after a finished run."""
    return sorted(
        p.name
        for p in ws.end_storage.rglob("*")
        if archive.is_temp_name(p.name) or p.name.endswith(archive.PENDING_SUFFIX)
    )


def assert_on_key(ws: Workspace, dbh: SimpleNamespace, entries: list[dict], key: SimpleNamespace) -> None:
    """Every file opens with KEY and no longer with the old archive key; row and sidecar match the file."""
    by_name = rows(dbh, ws)
    for e in entries:
        path = e["archived"]
        got = c4gh_decrypt(key.sk, path)
        assert got.returncode == 0, got.stderr
        assert got.stdout == e["plain"]
        assert c4gh_decrypt(ws.archive_sk, path).returncode != 0, f"{path} still opens with the old key"
        r = by_name[e["name"]]
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert (r["archive_key"], r["archive_checksum"], r["archive_size"]) == (key.fp, digest, path.stat().st_size)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
    side = subprocess.run(
        ["sha256sum", "-c", *sorted(p.name for p in entries[0]["archived"].parent.glob("*.sha256"))],
        cwd=entries[0]["archived"].parent,
        capture_output=True,
        text=True,
    )
    assert side.returncode == 0, side.stdout + side.stderr
    assert leftovers(ws) == []


def test_rekey_rotates_every_file_and_keeps_the_payload(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    entries = archived(ws)
    old_fp = fingerprint(load_public_key(ws.archive_pk))
    before = {e["name"]: e["archived"].read_bytes() for e in entries}
    key = new_key(ws)

    p = ws.legampi("rekey", "--new-archive-public-key", str(key.pk), "--new-archive-secret-key", str(key.sk))
    assert f"{len(entries)} file(s) to rotate, {len(entries)} rekeyed, 0 recovered" in p.stdout
    assert p.stdout.count("  REKEYED ") == len(entries)
    assert "REMINDER: edit" in p.stdout and "archive_public_key" in p.stdout

    assert_on_key(ws, dbh, entries, key)
    for e in entries:  # only the header changed: the payload bytes are the very same
        after = e["archived"].read_bytes()
        assert after[header_size(after) :] == before[e["name"]][header_size(before[e["name"]]) :]
        assert after != before[e["name"]]
    evs = events(dbh, ws, "rekeyed")
    assert sorted(ev["file_id"] for ev in evs) == sorted(e["name"] for e in entries)
    assert all(old_fp in ev["details"] and key.fp in ev["details"] for ev in evs)

    audit = ws.legampi("verify-archive")
    assert f"{len(entries)} ok" in audit.stdout

    # the operator points the config at the new public key, as reminded: new files go to the new key
    ws.config.write_text(ws.config.read_text().replace(str(ws.archive_pk), str(key.pk)))
    again = ws.legampi("rekey", "--new-archive-public-key", str(key.pk))
    assert (
        f"0 file(s) to rotate, 0 rekeyed, 0 recovered from an interrupted run, 0 failed, {len(entries)} "
        "already on the new key" in again.stdout
    )
    assert "REMINDER" not in again.stdout
    ws.config.write_text(ws.config.read_text().replace(str(ws.archive_sk), str(key.sk)))
    assert f"{len(entries)} ok" in ws.legampi("verify-archive", "--decrypt").stdout


def test_rekey_resumes_after_limit_and_reports_a_damaged_file(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    entries = archived(ws)
    key = new_key(ws)
    first = ws.legampi("rekey", "--new-archive-public-key", str(key.pk), "--limit", "2")
    assert "2 file(s) to rotate, 2 rekeyed" in first.stdout
    assert sorted(r["archive_key"] for r in rows(dbh, ws).values()) == sorted(
        [key.fp] * 2 + [fingerprint(load_public_key(ws.archive_pk))] * 2
    )

    # damage one of the two not yet rotated: it must be refused and left as it is
    todo = [e for e in entries if rows(dbh, ws)[e["name"]]["archive_key"] != key.fp]
    bad = todo[0]["archived"]
    data = bytearray(bad.read_bytes())
    data[-1] ^= 1
    bad.write_bytes(bytes(data))
    p = ws.legampi("rekey", "--new-archive-public-key", str(key.pk), check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "2 file(s) to rotate, 1 rekeyed, 0 recovered from an interrupted run, 1 failed, 2 already" in p.stdout
    assert f"FAILED {bad}: sha256" in p.stdout and "differs from the recorded" in p.stdout
    assert "REMINDER" not in p.stdout
    assert bad.read_bytes() == bytes(data)
    assert rows(dbh, ws)[todo[0]["name"]]["archive_key"] != key.fp
    assert [ev["file_id"] for ev in events(dbh, ws, "rekey-failed")] == [todo[0]["name"]]

    data[-1] ^= 1  # repaired (e.g. restored from the tape copy): the rerun finishes the rotation
    bad.write_bytes(bytes(data))
    last = ws.legampi("rekey", "--new-archive-public-key", str(key.pk))
    assert "1 file(s) to rotate, 1 rekeyed" in last.stdout
    assert_on_key(ws, dbh, entries, key)


def test_rekey_recovers_a_run_killed_between_rename_and_commit(
    workspace: Workspace, dbh: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = workspace
    entries = archived(ws)
    key = new_key(ws)
    keys = rekey.load_rekey_keys(load(ws.config), key.pk)
    by_name = rows(dbh, ws)

    def task(e: dict) -> rekey.RekeyTask:
        r = by_name[e["name"]]
        return rekey.RekeyTask(
            r["file_id"],
            r["dataset_id"],
            r["archive_path"],
            r["archive_checksum"],
            r["archive_checksum_type"],
            r["archive_key"],
            r["md5"],
            r["sha256"],
        )

    # file 0: rotated on disk, then the job died before rank 0 recorded it
    done = rekey.rekey_file(task(entries[0]), keys)
    assert done.result == "rekeyed", done.details
    assert rekey.pending_path(entries[0]["archived"]).is_file()
    assert rows(dbh, ws)[entries[0]["name"]]["archive_key"] != key.fp
    audit = ws.legampi("verify-archive", check=False)
    # the marker shows the rotation is unfinished, on the file's own line (the marker is not "unexpected")
    assert audit.returncode == 1 and "0 unexpected" in audit.stdout, audit.stdout
    assert f"a key rotation is pending ({Path(entries[0]['name']).name}.rekey)" in audit.stdout

    # file 1: died after the marker was written but before the rename: nothing changed on disk
    original = entries[1]["archived"].read_bytes()
    real_replace = os.replace

    def dies_at_rename(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        if Path(dst) == entries[1]["archived"]:
            raise OSError(5, "simulated crash before the rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dies_at_rename)
    failed = rekey.rekey_file(task(entries[1]), keys)
    monkeypatch.setattr(os, "replace", real_replace)
    assert failed.result == "failed" and "simulated crash" in failed.details
    assert entries[1]["archived"].read_bytes() == original
    assert rekey.pending_path(entries[1]["archived"]).is_file()
    assert not [p for p in ws.end_storage.rglob("*") if archive.is_temp_name(p.name)]

    p = ws.legampi("rekey", "--new-archive-public-key", str(key.pk), "--new-archive-secret-key", str(key.sk))
    assert f"{len(entries)} file(s) to rotate, {len(entries) - 1} rekeyed, 1 recovered" in p.stdout
    assert f"RECOVERED {entries[0]['archived']}: found rotated by an interrupted run" in p.stdout
    assert_on_key(ws, dbh, entries, key)

    # a crash after the commit but before the marker was removed: the next run just tidies up
    r0 = rows(dbh, ws)[entries[0]["name"]]
    marker = rekey.pending_path(entries[0]["archived"])
    marker.write_text(
        json.dumps(
            {
                "algo": "sha256",
                "old_checksum": "x",
                "new_checksum": r0["archive_checksum"],
                "old_key": "y",
                "new_key": key.fp,
            }
        )
    )
    tidy = ws.legampi("rekey", "--new-archive-public-key", str(key.pk))
    assert "0 file(s) to rotate" in tidy.stdout
    assert not marker.exists()


def test_rekey_refuses_keys_that_do_not_fit(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    entries = archived(ws, sizes=[1000])
    key, other = new_key(ws), new_key(ws, "other")
    before = snapshot(ws.end_storage)
    p = ws.legampi(
        "rekey", "--new-archive-public-key", str(key.pk), "--new-archive-secret-key", str(other.sk), check=False
    )
    assert p.returncode == 2 and f"{other.sk} is not the secret key of {key.pk}" in p.stderr
    p = ws.legampi("rekey", "--new-archive-public-key", str(ws.archive_pk), check=False)
    assert p.returncode == 2 and "nothing to rotate" in p.stderr
    assert snapshot(ws.end_storage) == before
    assert rows(dbh, ws)[entries[0]["name"]]["archive_key"] == fingerprint(load_public_key(ws.archive_pk))


# ---------------------------------------------------------------------- export
def test_export_for_a_researcher(workspace: Workspace, dbh: SimpleNamespace, tmp_path: Path) -> None:
    ws = workspace
    entries = archived(ws)
    researcher = new_key(ws, "researcher")
    archive_before = snapshot(ws.end_storage)
    dest = tmp_path / "export"

    r = dbh.ok(ws, "export", "DS1", "--recipient-pk", str(researcher.pk), "--to", str(dest), "--verify")
    assert f"exported dataset DS1: {len(entries)} file(s) for recipient key {researcher.fp}" in r.stdout
    for e in entries:
        out = dest / e["name"]
        assert stat.S_IMODE(out.stat().st_mode) == 0o640
        got = c4gh_decrypt(researcher.sk, out)
        assert got.returncode == 0, got.stderr
        assert hashlib.md5(got.stdout).hexdigest() == e["md5"]
        assert c4gh_decrypt(ws.archive_sk, out).returncode != 0, "the export must not open with the archive key"
    check = subprocess.run(["sha256sum", "-c", "DS1.sha256"], cwd=dest, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == len(entries)
    tab = (dest / "DS1.tab").read_text().splitlines()
    assert tab[0].startswith("#file_id\tname\tmd5\tsha256")
    assert sorted(tuple(line.split("\t")[:4]) for line in tab[1:]) == sorted(
        (e["name"], e["name"], e["md5"], e["sha256"]) for e in entries
    )
    assert snapshot(ws.end_storage) == archive_before, "export must not touch the archive"
    evs = events(dbh, ws, "exported")
    assert sorted(ev["file_id"] for ev in evs) == sorted(e["name"] for e in entries)
    assert all(researcher.fp in ev["details"] for ev in evs)

    exported = snapshot(dest)
    again = dbh.run(ws, "export", "DS1", "--recipient-pk", str(researcher.pk), "--to", str(dest))
    assert again.returncode == 1 and "already exists; not overwritten" in again.stderr
    assert snapshot(dest) == exported
    assert len(events(dbh, ws, "exported")) == len(entries)


def test_export_refuses_an_incomplete_dataset_unless_partial(
    workspace: Workspace, dbh: SimpleNamespace, tmp_path: Path
) -> None:
    ws = workspace
    entries = archived(ws, sizes=[10, 70_000])
    late = ws.add_file("DS1/late.bam.c4gh", 500)
    ws.manifest("DS1", [*entries, late])
    dbh.ok(ws, "register", str(ws.metadata / "DS1.tab"), "--dataset", "DS1")
    researcher = new_key(ws, "researcher")

    refused = dbh.run(ws, "export", "DS1", "--recipient-pk", str(researcher.pk), "--to", str(tmp_path / "a"))
    assert refused.returncode == 1
    assert "1 of 3 file(s) are not available" in refused.stderr and "DS1/late.bam.c4gh" in refused.stderr
    assert not (tmp_path / "a").exists()
    assert (
        dbh.run(ws, "export", "NOPE", "--recipient-pk", str(researcher.pk), "--to", str(tmp_path / "b")).returncode == 1
    )
    inside = dbh.run(
        ws, "export", "DS1", "--recipient-pk", str(researcher.pk), "--to", str(ws.end_storage / "x"), "--partial"
    )
    assert inside.returncode == 1 and "is inside the archive" in inside.stderr
    assert not (ws.end_storage / "x").exists()

    r = dbh.ok(ws, "export", "DS1", "--recipient-pk", str(researcher.pk), "--to", str(tmp_path / "a"), "--partial")
    assert "2 file(s)" in r.stdout and "(1 not available, skipped)" in r.stdout
    assert not (tmp_path / "a" / "DS1" / "late.bam.c4gh").exists()
    for e in entries:
        assert c4gh_decrypt(researcher.sk, tmp_path / "a" / e["name"]).stdout == e["plain"]
