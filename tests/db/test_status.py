"""`legampi status`: the JSON shape, the readable table, and an event row for every status change."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from types import SimpleNamespace

from tests.conftest import Workspace

FILE_KEYS = {
    "file_id",
    "dataset_id",
    "file_name",
    "status",
    "archive_path",
    "md5",
    "sha256",
    "archive_checksum",
    "error",
}
DATASET_KEYS = {
    "dataset_id",
    "n_files",
    "n_bytes",
    "date_requested",
    "date_download_start",
    "date_download_end",
    "date_processing_end",
}
PAST = time.time() - 86400


def changes(events: list[dict]) -> list[str]:
    """The status after each event, repeats collapsed (e.g. 'source-removed' keeps a file available)."""
    out: list[str] = []
    for e in events:
        if e["status"] is not None and (not out or out[-1] != e["status"]):
            out.append(e["status"])
    return out


def test_status_json_shape_and_dataset_filter(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    (ws.metadata / "EGAD1.tab").write_text(f"a.c4gh\t{'1' * 32}\t5000000000000\nb/c.c4gh\t{'2' * 32}\t7\n")
    (ws.metadata / "EGAD2.tab").write_text(f"z.c4gh\t{'3' * 32}\t\t{'4' * 64}\n")
    for ds in ("EGAD1", "EGAD2"):
        dbh.ok(ws, "register", str(ws.metadata / f"{ds}.tab"))
    r = ws.legampi("status", "--json")  # the real executable
    data = json.loads(r.stdout)
    assert {"datasets", "files"} <= set(data)
    assert [d["dataset_id"] for d in data["datasets"]] == ["EGAD1", "EGAD2"]
    for d in data["datasets"]:
        assert DATASET_KEYS <= set(d)
    for f in data["files"]:
        assert FILE_KEYS <= set(f)
    d1 = data["datasets"][0]
    assert (d1["n_files"], d1["n_bytes"]) == (2, 5_000_000_000_007)
    assert d1["date_requested"] is not None and d1["date_download_start"] is None
    dt.datetime.fromisoformat(d1["date_requested"])
    files = {f["file_id"]: f for f in data["files"]}
    assert files["z.c4gh"]["sha256"] == "4" * 64 and files["z.c4gh"]["md5"] == "3" * 32
    assert files["a.c4gh"] == {
        **files["a.c4gh"],
        "dataset_id": "EGAD1",
        "status": "pending",
        "archive_path": None,
        "archive_checksum": None,
        "error": None,
        "md5": "1" * 32,
        "sha256": None,
    }
    only = dbh.status(ws, "--dataset", "EGAD2")
    assert [d["dataset_id"] for d in only["datasets"]] == ["EGAD2"]
    assert [f["file_id"] for f in only["files"]] == ["z.c4gh"]
    assert dbh.status(ws, "--dataset", "NOPE") == {**dbh.status(ws, "--dataset", "NOPE"), "datasets": [], "files": []}


def test_status_table_is_readable(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    (ws.metadata / "EGAD1.tab").write_text(f"dir/name with space.c4gh\t{'1' * 32}\t3000000000\n")
    dbh.ok(ws, "register", str(ws.metadata / "EGAD1.tab"))
    out = dbh.ok(ws, "status").stdout
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["dataset", "files", "transferred", "plaintext"] and "pending" in lines[0]
    assert lines[2].startswith("EGAD1") and "2.8 GiB" in lines[2]
    assert any("dir/name with space.c4gh" in x and "pending" in x for x in lines)
    brief = dbh.ok(ws, "status", "--brief").stdout
    assert "EGAD1" in brief and "name with space" not in brief


def test_every_status_change_has_an_event_and_status_shows_the_archive(
    workspace: Workspace, dbh: SimpleNamespace
) -> None:
    """register -> monitor -> process (a real singleton job) -> operator updates: one event per change."""
    ws = workspace
    good = ws.add_file("s/ok.c4gh", 3000, where="receiving")
    bad = ws.add_file("s/bad.c4gh", 2000, where="receiving")
    man = ws.metadata / "EGAD1.tab"
    man.write_text(f"{good['name']}\t{good['md5']}\n{bad['name']}\t{'0' * 32}\n")
    dbh.ok(ws, "register", str(man))
    for rel in (good["name"], bad["name"]):
        os.utime(ws.receiving / rel, (PAST, PAST))
    for _ in range(3):
        dbh.ok(ws, "monitor")
    r = ws.legampi("process", check=False)
    assert r.returncode in (0, 1), r.stderr
    data = dbh.status(ws)
    files = {f["file_id"]: f for f in data["files"]}
    ok, failed = files["s/ok.c4gh"], files["s/bad.c4gh"]
    assert ok["status"] == "available" and ok["error"] is None
    assert ok["md5"] == good["md5"] and ok["sha256"] == good["sha256"]
    assert ok["archive_path"] and ok["archive_path"].endswith("s/ok.c4gh")
    assert ok["archive_checksum"] and len(ok["archive_checksum"]) == 64
    # issue 17: both sizes, named: transferred (the encrypted file as received, filled in by monitor)
    # and plaintext (what it decrypts to, recorded when archived)
    assert (ok["size"], ok["transferred_bytes"], ok["plaintext_bytes"]) == (good["size"], good["size"], 3000)
    assert good["size"] != 3000
    assert failed["status"] == "failed" and failed["error"] and failed["archive_path"] is None
    [ds] = data["datasets"]
    assert ds["by_status"]["available"]["transferred_bytes"] == good["size"]
    assert ds["by_status"]["available"]["plaintext_bytes"] == 3000 and ds["plaintext_bytes"] == 3000
    table = dbh.ok(ws, "status").stdout.splitlines()
    assert table[0].split()[:4] == ["dataset", "files", "transferred", "plaintext"]
    row = next(x for x in table if "s/ok.c4gh" in x)
    from legampi.views import human

    assert row.index(human(int(good["size"]))) < row.index(human(3000))  # transferred, then plaintext
    assert ds["date_download_start"] and ds["date_download_end"] and ds["date_processing_end"] is None
    dbh.ok(ws, "update", "s/bad.c4gh", "received", "--reason", "manifest fixed")
    dbh.ok(ws, "update", "s/bad.c4gh", "failed", "--reason", "still wrong")
    db = dbh.connect(ws.db_url)
    for file_id, final in (("s/ok.c4gh", "available"), ("s/bad.c4gh", "failed")):
        events = db.events(file_id=file_id)
        statuses = changes(events)
        assert statuses[0] == "pending" and statuses[-1] == final
        assert [e["event"] for e in events][:2] == ["registered", "received"]
        assert all(e["at"] for e in events)
    assert changes(db.events(file_id="s/bad.c4gh")) == [
        "pending",
        "received",
        "processing",
        "failed",
        "received",
        "failed",
    ]
    assert changes(db.events(file_id="s/ok.c4gh")) == ["pending", "received", "processing", "available"]
    assert [e["event"] for e in db.events(file_id="s/ok.c4gh")][:4] == [
        "registered",
        "received",
        "claimed",
        "available",
    ]
    last = db.events(file_id="s/bad.c4gh")[-1]
    assert last["event"] == "status-set" and "still wrong" in last["details"]
    assert db.files(file_ids=["s/bad.c4gh"])[0]["error"] == "still wrong"


def test_status_on_an_uninitialised_database_says_what_to_do(bare_workspace: Workspace, dbh: SimpleNamespace) -> None:
    r = dbh.run(bare_workspace, "status", "--json")
    assert r.returncode == 2 and r.stdout == ""
    assert "run `legampi init-db` first" in r.stderr
