"""`legampi register` refuses what can never be archived, and `register --amend` corrects expected values.

Every refusal names the manifest line and leaves every table exactly as it was (one transaction).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from legampi import config, registration
from legampi.manifest import ManifestError
from tests.conftest import Workspace

MD5 = [f"{i:x}" * 32 for i in range(1, 10)]
SHA = [f"{i:x}" * 64 for i in range(1, 10)]


def tab(ws: Workspace, name: str, text: str) -> Path:
    path = ws.metadata / name
    path.write_text(text, encoding="utf-8")
    return path


def refuse(ws: Workspace, dbh: SimpleNamespace, man: Path, *extra: str) -> str:
    """Register must fail, say why on stderr, and leave every table exactly as it was."""
    before = dbh.dump(ws.db_url)
    r = dbh.run(ws, "register", *extra, str(man))
    assert r.returncode == 1, r.output
    assert r.stdout == ""
    assert dbh.dump(ws.db_url) == before
    return r.stderr


# ------------------------------------------------------------------ archive-path collisions
@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("twin.bam.c4gh", "twin.bam"),
        ("x.gpg", "x.cip"),
        ("x.c4gh", "x.C4GH"),
        ("d/x.GPG", "d/x.c4gh"),
    ],
)
def test_two_manifest_entries_with_one_archive_path_are_refused(
    workspace: Workspace, dbh: SimpleNamespace, first: str, second: str
) -> None:
    ws = workspace
    man = tab(ws, "DS1.tab", f"ok.c4gh\t{MD5[0]}\n{first}\t{MD5[1]}\n# comment\n{second}\t{MD5[2]}\n")
    err = refuse(ws, dbh, man)
    assert f"{man}:4: {second!r} would be archived as" in err and f"like {first!r} on line 2" in err


@pytest.mark.parametrize(("registered", "new"), [("twin.bam.c4gh", "twin.bam"), ("x.cip", "x.C4GH")])
def test_an_entry_with_a_registered_files_archive_path_is_refused(
    workspace: Workspace, dbh: SimpleNamespace, registered: str, new: str
) -> None:
    ws = workspace
    dbh.ok(ws, "register", str(tab(ws, "DS1.tab", f"{registered}\t{MD5[0]}\n")))
    man = tab(ws, "DS2.tab", f"fine.c4gh\t{MD5[1]}\n{new}\t{MD5[2]}\n")
    err = refuse(ws, dbh, man)
    assert f"{man}:2: {new!r} would be archived as" in err
    assert f"registered file {registered} ({registered!r}, dataset DS1)" in err
    # --amend registers new files too, with the same refusal
    err = refuse(ws, dbh, man, "--amend")
    assert f"{man}:2: {new!r} would be archived as" in err


def test_reregistering_a_manifest_is_not_a_collision_with_itself(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    man = tab(ws, "DS1.tab", f"a.gpg\t{MD5[0]}\nb.C4GH\t{MD5[1]}\n")
    dbh.ok(ws, "register", str(man))
    assert "0 file(s) registered, 2 already registered" in dbh.ok(ws, "register", str(man)).stdout
    names = {f["file_name"]: f["archive_name"] for f in dbh.connect(ws.db_url).files()}
    assert names == {"a.gpg": "a.c4gh", "b.C4GH": "b.c4gh"}


# ------------------------------------------------------------------ file-system limits
def test_a_name_too_long_for_the_file_systems_is_refused(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    name_max = os.pathconf(ws.end_storage, "PC_NAME_MAX")
    # 244 bytes: within the manifest's generic 255-byte bound, but its temp and sidecar names are not
    long = "s/" + "n" * 235 + ".bam.c4gh"
    man = tab(ws, "DS1.tab", f"ok.c4gh\t{MD5[0]}\n{long}\t{MD5[1]}\n")
    err = refuse(ws, dbh, man)
    assert f"{man}:2: " in err and "too long for the file system of" in err and f"it allows {name_max}" in err
    assert "n" * 235 not in err  # the message shows the name shortened
    # ~300 bytes: refused already by the manifest's generic bound, with its line number
    err = refuse(ws, dbh, tab(ws, "DS1.tab", f"ok.c4gh\t{MD5[0]}\ns/{'n' * 300}.bam.c4gh\t{MD5[1]}\n"))
    assert ":2: " in err and "longer than 255 bytes" in err
    # a name whose derived names all fit is accepted
    dbh.ok(ws, "register", str(tab(ws, "DS1.tab", f"ok.c4gh\t{MD5[0]}\n{'s/' + 'n' * 200}.bam.c4gh\t{MD5[1]}\n")))


def test_a_folder_name_too_long_is_refused(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    man = tab(ws, "DS1.tab", f"{'d' * 256}/x.c4gh\t{MD5[0]}\n")
    err = refuse(ws, dbh, man)
    # the manifest's generic 255-byte bound per component catches it first on this ext4 (NAME_MAX 255);
    # the file-system check's folder rule is exercised directly in tests/unit/test_name_limits.py
    assert f"{man}:1: " in err and "component longer than 255 bytes" in err


# ------------------------------------------------------------------ transfer checksums
def entries_with_transfer(ws: Workspace) -> tuple[config.Config, list[dict]]:
    """Entries as the manifest parser hands them over (keys transfer_checksum/_type, EGA `checksum`)."""
    cfg = config.load(str(ws.config))
    base = {"md5": MD5[0], "sha256": None, "size": 10, "line": 1}
    return cfg, [
        dict(base, file_id="EGAF1", file_name="a.c4gh", transfer_checksum=MD5[5].upper(), transfer_checksum_type="MD5"),
        dict(
            base, file_id="EGAF2", file_name="b.c4gh", line=2, transfer_checksum=SHA[6], transfer_checksum_type="sha256"
        ),
        dict(base, file_id="EGAF3", file_name="c.c4gh", line=3),
    ]


def test_transfer_checksums_are_stored(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    cfg, entries = entries_with_transfer(ws)
    db = dbh.connect(ws.db_url)
    assert db.register("DS", registration.prepare(entries, cfg, "m.json"), "m.json") == (3, 0)
    got = {f["file_id"]: (f["transfer_checksum"], f["transfer_checksum_type"]) for f in db.files()}
    assert got == {"EGAF1": (MD5[5], "md5"), "EGAF2": (SHA[6], "sha256"), "EGAF3": (None, None)}
    # a contradicting transfer checksum is refused like any other value, pointing at --amend
    _, again = entries_with_transfer(ws)
    again[1]["transfer_checksum"] = SHA[7]
    with pytest.raises(ValueError, match=r"m\.json:2: file EGAF2 is registered with transfer_checksum .*--amend"):
        db.register("DS", registration.prepare(again, cfg, "m.json"), "m.json")


@pytest.mark.parametrize(
    ("value", "kind", "words"),
    [(MD5[0][:-1], "md5", "bad transfer md5"), (MD5[0], "sha256", "bad transfer sha256"), (MD5[0], "crc32", "not md5")],
)
def test_bad_transfer_checksums_are_refused(workspace: Workspace, value: str, kind: str, words: str) -> None:
    cfg, entries = entries_with_transfer(workspace)
    entries[1].update(transfer_checksum=value, transfer_checksum_type=kind)
    with pytest.raises(ManifestError, match=rf"m\.json:2: .*{words}"):
        registration.prepare(entries, cfg, "m.json")


# ------------------------------------------------------------------ register --amend
def set_status(ws: Workspace, dbh: SimpleNamespace, file_id: str, status: str) -> None:
    db = dbh.connect(ws.db_url)
    db.execute("UPDATE file SET status = ?, error = ? WHERE file_id = ?", (status, f"was {status}", file_id))
    db.close()


def test_amend_corrects_expected_values_and_logs_old_and_new(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    dbh.ok(ws, "register", str(tab(ws, "DS1.tab", f"p.c4gh\t{MD5[0]}\t10\nf.c4gh\t{MD5[1]}\nq.c4gh\t{MD5[2]}\n")))
    set_status(ws, dbh, "f.c4gh", "failed")
    (ws.processing / "f.c4gh").write_bytes(b"source is here")
    man = tab(
        ws, "DS1.tab", f"p.c4gh\t{MD5[3]}\t11\t{SHA[3]}\nf.c4gh\t{MD5[4]}\nq.c4gh\t{MD5[2]}\nnew.c4gh\t{MD5[5]}\n"
    )
    err = refuse(ws, dbh, man)  # plain register still refuses the contradiction
    assert f"{man}:1: file p.c4gh is registered with md5 {MD5[0]}" in err and "--amend" in err
    r = dbh.ok(ws, "register", "--amend", str(man))
    assert "2 file(s) amended (1 failed file(s) back to received), 1 registered, 1 unchanged" in r.stdout
    db = dbh.connect(ws.db_url)
    rows = {f["file_id"]: f for f in db.files()}
    assert (rows["p.c4gh"]["md5"], rows["p.c4gh"]["size"], rows["p.c4gh"]["sha256"]) == (MD5[3], 11, SHA[3])
    assert rows["p.c4gh"]["status"] == "pending"
    assert (rows["f.c4gh"]["md5"], rows["f.c4gh"]["status"], rows["f.c4gh"]["error"]) == (MD5[4], "received", None)
    assert rows["new.c4gh"]["status"] == "pending" and rows["q.c4gh"]["md5"] == MD5[2]
    [ep] = db.events(file_id="p.c4gh", event="amended")
    assert ep["details"] == f"md5 {MD5[0]} -> {MD5[3]}; sha256 (none) -> {SHA[3]}; size 10 -> 11 (from {man}:1)"
    [ef] = db.events(file_id="f.c4gh", event="amended")
    assert (
        ef["status"] == "received"
        and f"md5 {MD5[1]} -> {MD5[4]}" in ef["details"]
        and "failed -> received" in ef["details"]
    )
    [ds] = db.datasets()
    assert ds["n_files"] == 4 and ds["n_bytes"] == 11
    # amending again with the same manifest changes nothing
    before = dbh.dump(ws.db_url)
    assert "0 file(s) amended" in dbh.ok(ws, "register", "--amend", str(man)).stdout
    assert dbh.dump(ws.db_url) == before


def test_amend_leaves_a_failed_file_without_its_source_failed(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    dbh.ok(ws, "register", str(tab(ws, "DS1.tab", f"f.c4gh\t{MD5[1]}\n")))
    set_status(ws, dbh, "f.c4gh", "failed")
    r = dbh.ok(ws, "register", "--amend", str(tab(ws, "DS1.tab", f"f.c4gh\t{MD5[4]}\n")))
    assert "1 file(s) amended (0 failed file(s) back to received)" in r.stdout
    assert "f.c4gh: checksum corrected but it stays failed" in r.stdout and "--retry-failed" in r.stdout
    [row] = dbh.connect(ws.db_url).files()
    assert (row["md5"], row["status"], row["error"]) == (MD5[4], "failed", "was failed")


@pytest.mark.parametrize(
    ("status", "words"), [("available", "is already available"), ("processing", "is being processed")]
)
def test_amend_refuses_available_and_claimed_files(
    workspace: Workspace, dbh: SimpleNamespace, status: str, words: str
) -> None:
    ws = workspace
    dbh.ok(ws, "register", str(tab(ws, "DS1.tab", f"a.c4gh\t{MD5[0]}\nz.c4gh\t{MD5[1]}\n")))
    set_status(ws, dbh, "z.c4gh", status)
    man = tab(ws, "DS1.tab", f"a.c4gh\t{MD5[2]}\nnew.c4gh\t{MD5[3]}\nz.c4gh\t{MD5[4]}\n")
    err = refuse(ws, dbh, man, "--amend")
    assert f"{man}:3: file z.c4gh {words}" in err and "its md5 cannot be amended" in err


def test_amend_refuses_other_contradictions(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    obj = {"fileId": "EGAF1", "datasetId": "EGAD1", "fileName": "x.c4gh", "fileSize": 1, "fileMd5": MD5[0]}
    (ws.metadata / "one.json").write_text(json.dumps([obj]))
    dbh.ok(ws, "register", str(ws.metadata / "one.json"))
    renamed = ws.metadata / "two.json"
    renamed.write_text(json.dumps([dict(obj, fileName="y.c4gh", fileMd5=MD5[1])]))
    err = refuse(ws, dbh, renamed, "--amend")
    assert f"{renamed}:1: file EGAF1 is registered with file_name x.c4gh, the manifest says y.c4gh" in err
    other = ws.metadata / "three.json"
    other.write_text(json.dumps([dict(obj, datasetId="EGAD2", fileMd5=MD5[1])]))
    err = refuse(ws, dbh, other, "--amend")
    assert "already registered in dataset EGAD1, not EGAD2" in err


def test_plan_hands_out_amended_files_and_transfer_checksums(workspace: Workspace, dbh: SimpleNamespace) -> None:
    """Rank 0's plan: an amended failed file is claimed without --retry-failed, and each task carries the
    registered transfer checksum to the worker."""
    from legampi.ingest import plan

    ws = workspace
    cfg, entries = entries_with_transfer(ws)
    db = dbh.connect(ws.db_url)
    db.register("DS", registration.prepare(entries, cfg, "m.json"), "m.json")
    for name in ("a.c4gh", "b.c4gh", "c.c4gh"):
        (ws.processing / name).write_bytes(b"x")
    db.execute("UPDATE file SET status = 'failed' WHERE file_id = 'EGAF1'")
    tasks = {t.file_id: t for t in plan(db, cfg, "job-1").tasks}
    assert set(tasks) == {"EGAF2", "EGAF3"}
    assert (tasks["EGAF2"].transfer_checksum, tasks["EGAF2"].transfer_checksum_type) == (SHA[6], "sha256")
    assert tasks["EGAF3"].transfer_checksum is None
    _, fixed = entries_with_transfer(ws)
    fixed[0]["transfer_checksum"] = MD5[8]
    done = db.amend("DS", registration.prepare(fixed[:1], cfg, "m.json"), "m.json", lambda rel: True)
    assert done.retried == ["a.c4gh"] and done.amended == 1
    [task] = plan(db, cfg, "job-2").tasks
    assert (task.file_id, task.transfer_checksum, task.transfer_checksum_type) == ("EGAF1", MD5[8], "md5")
    db.close()
