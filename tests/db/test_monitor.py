"""`legampi monitor`: real passes over a receiving folder (config: age_limit 0, pass_limit 2).

A file is tracked on the pass that first sees it, counted on each later pass in which it is unchanged,
and moved on the pass that reaches pass_limit: three passes for a finished file. Mtimes are set with
os.utime, never by sleeping.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

from tests.conftest import Workspace

PAST = time.time() - 3 * 86400
MD5 = [f"{i:x}" * 32 for i in range(1, 16)]


def put(ws: Workspace, rel: str, data: bytes, mtime: float = PAST) -> Path:
    path = ws.receiving / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def register(ws: Workspace, dbh: SimpleNamespace, dataset: str, names: list[str]) -> None:
    man = ws.metadata / f"{dataset}.tab"
    man.write_text("".join(f"{n}\t{MD5[i % len(MD5)]}\n" for i, n in enumerate(names)), encoding="utf-8")
    dbh.ok(ws, "register", str(man))


def monitor(ws: Workspace, dbh: SimpleNamespace, *args: str) -> SimpleNamespace:
    r = dbh.ok(ws, "monitor", *args)
    moved = [x[len("  moved ") :] for x in r.stdout.splitlines() if x.startswith("  moved ")]
    return SimpleNamespace(out=r.stdout, err=r.stderr, moved=moved)


def dataset(dbh: SimpleNamespace, ws: Workspace, ds: str) -> dict:
    [row] = dbh.connect(ws.db_url).datasets(ds)
    return row


def test_deep_folders_odd_names_and_dataset_dates(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    deep = "s1/lane 2/run\u00e9/x/one file \u00fc\u00df.bam.c4gh"
    names = [deep, "s1/r2/l3/two.c4gh", "late.c4gh"]
    register(ws, dbh, "EGAD1", names)
    put(ws, deep, b"first file")
    put(ws, names[1], b"second")
    r1 = ws.legampi("monitor")  # the real executable for the first pass
    assert "0 moved to processing, 2 newly tracked" in r1.stdout
    start = dataset(dbh, ws, "EGAD1")["date_download_start"]
    assert start is not None and dataset(dbh, ws, "EGAD1")["date_download_end"] is None
    assert monitor(ws, dbh).moved == []
    assert sorted(monitor(ws, dbh).moved) == sorted(names[:2])
    for n, data in ((deep, b"first file"), (names[1], b"second")):
        assert (ws.processing / n).read_bytes() == data
        assert not (ws.receiving / n).exists()
    files = {f["file_name"]: f for f in dbh.connect(ws.db_url).files()}
    assert [files[n]["status"] for n in names] == ["received", "received", "pending"]
    assert files[deep]["size"] == len(b"first file")
    ds = dataset(dbh, ws, "EGAD1")
    assert ds["date_download_start"] == start and ds["date_download_end"] is None  # late.c4gh still missing
    # the last file arrives: start is not restamped, end is stamped when it moves
    put(ws, "late.c4gh", b"late")
    for _ in range(2):
        assert monitor(ws, dbh).moved == []
        assert dataset(dbh, ws, "EGAD1")["date_download_end"] is None
    assert monitor(ws, dbh).moved == ["late.c4gh"]
    ds = dataset(dbh, ws, "EGAD1")
    assert ds["date_download_start"] == start and ds["date_download_end"] is not None
    assert ds["date_download_end"] > start
    events = dbh.connect(ws.db_url).events(event="received")
    assert sorted(e["file_id"] for e in events) == sorted(names)
    assert dbh.connect(ws.db_url).tracking() == {}  # moved files are forgotten


def test_growing_or_touched_file_is_never_moved(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    register(ws, dbh, "EGAD1", ["grow.c4gh"])
    path = put(ws, "grow.c4gh", b"x")
    for step in range(6):  # every pass sees a change: size on even steps, mtime only on odd steps
        assert monitor(ws, dbh).moved == []
        assert path.exists() and not (ws.processing / "grow.c4gh").exists()
        assert dbh.connect(ws.db_url).tracking()["grow.c4gh"]["passes"] == 0
        if step % 2 == 0:
            with open(path, "ab") as fh:
                fh.write(b"more")
            os.utime(path, (PAST, PAST))
        else:
            os.utime(path, (PAST + step, PAST + step))
    # once it stops changing (the next pass sees the last change) it needs pass_limit unchanged passes
    assert monitor(ws, dbh).moved == []
    assert dbh.connect(ws.db_url).tracking()["grow.c4gh"]["passes"] == 0
    assert monitor(ws, dbh).moved == []
    assert dbh.connect(ws.db_url).tracking()["grow.c4gh"]["passes"] == 1
    assert monitor(ws, dbh).moved == ["grow.c4gh"]
    assert (ws.processing / "grow.c4gh").read_bytes() == b"x" + b"more" * 3


def test_young_files_wait(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    text = ws.config.read_text()
    assert "age_limit = 0" in text
    young = ws.root / "young.ini"
    young.write_text(text.replace("age_limit = 0", "age_limit = 86400"))
    register(ws, dbh, "EGAD1", ["new.c4gh"])
    path = put(ws, "new.c4gh", b"fresh", mtime=time.time())
    for _ in range(4):
        r = dbh.ok(ws, "monitor", config=young)
        assert "0 moved" in r.stdout
    assert path.exists() and dbh.connect(ws.db_url).tracking()["new.c4gh"]["passes"] == 0


def test_unregistered_files_stay_and_are_listed(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    register(ws, dbh, "EGAD1", ["known.c4gh"])
    put(ws, "known.c4gh", b"k")
    put(ws, "stray/unknown file \u00e5.c4gh", b"u")
    for _ in range(4):
        r = monitor(ws, dbh)
        assert "1 unregistered" in r.out
    assert (ws.receiving / "stray/unknown file \u00e5.c4gh").read_bytes() == b"u"
    assert not (ws.processing / "stray").exists()
    assert (ws.processing / "known.c4gh").exists()
    data = dbh.status(ws)
    assert data["unregistered"] == ["stray/unknown file \u00e5.c4gh"]
    assert all(f["file_name"] != "stray/unknown file \u00e5.c4gh" for f in data["files"])
    text = dbh.ok(ws, "status").stdout
    assert "1 unregistered file(s) in receiving" in text and "stray/unknown file \u00e5.c4gh" in text


def test_symlinks_and_fifos_are_never_followed_or_moved(
    workspace: Workspace, dbh: SimpleNamespace, tmp_path: Path
) -> None:
    ws = workspace
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "target.c4gh").write_bytes(b"not yours")
    (outside / "dir" / "inner.c4gh").write_bytes(b"nor this")
    register(ws, dbh, "EGAD1", ["link.c4gh", "linkdir/inner.c4gh", "pipe.c4gh", "real.c4gh"])
    (ws.receiving / "link.c4gh").symlink_to(outside / "target.c4gh")
    (ws.receiving / "linkdir").symlink_to(outside / "dir")
    os.mkfifo(ws.receiving / "pipe.c4gh")
    put(ws, "real.c4gh", b"real")
    moved = []
    for _ in range(4):
        r = monitor(ws, dbh)
        moved += r.moved
    assert moved == ["real.c4gh"]
    assert "ignoring symbolic link" in r.err and "ignoring special file" in r.err
    assert (ws.receiving / "link.c4gh").is_symlink() and (ws.receiving / "linkdir").is_symlink()
    assert (outside / "target.c4gh").read_bytes() == b"not yours"
    assert (outside / "dir" / "inner.c4gh").read_bytes() == b"nor this"
    assert (ws.receiving / "pipe.c4gh").exists()
    assert sorted(p.name for p in ws.processing.rglob("*")) == ["real.c4gh"]
    status = {f["file_name"]: f["status"] for f in dbh.connect(ws.db_url).files()}
    assert status == {
        "link.c4gh": "pending",
        "linkdir/inner.c4gh": "pending",
        "pipe.c4gh": "pending",
        "real.c4gh": "received",
    }
    assert set(dbh.connect(ws.db_url).tracking()) == set()


def test_branches_restrict_a_pass_to_its_share(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    names = [f"d/f{i}.c4gh" for i in range(1, 8)]
    register(ws, dbh, "EGAD1", names)
    for n in names:
        put(ws, n, n.encode())
    moved = []
    for _ in range(3):
        moved += monitor(ws, dbh, "--branches", "3", "--branch", "2").moved
    assert moved == ["d/f2.c4gh", "d/f5.c4gh"]  # files 2 and 5 of the sorted listing (2 + 3n)
    assert sorted(p.name for p in (ws.processing / "d").iterdir()) == ["f2.c4gh", "f5.c4gh"]
    assert set(dbh.connect(ws.db_url).tracking()) == set()  # other shares were not even looked at
    r = dbh.run(ws, "monitor", "--branches", "3", "--branch", "4")
    assert r.returncode == 1 and "--branch must be between 1 and --branches (3), got 4" in r.stderr


def test_second_copy_of_a_received_file_is_left_and_reported(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    register(ws, dbh, "EGAD1", ["a.c4gh"])
    put(ws, "a.c4gh", b"one")
    for _ in range(3):
        monitor(ws, dbh)
    put(ws, "a.c4gh", b"two")
    before = dbh.dump(ws.db_url)
    r = dbh.run(ws, "monitor")
    assert r.returncode == 1 and "already received" in r.stderr and "a second copy arrived" in r.stderr
    assert (ws.receiving / "a.c4gh").read_bytes() == b"two"
    assert (ws.processing / "a.c4gh").read_bytes() == b"one"
    after = dbh.dump(ws.db_url)
    assert after["file"] == before["file"] and after["file_event"] == before["file_event"]


def test_partial_sizes_seen_by_the_monitor_do_not_contradict_the_manifest(
    workspace: Workspace, dbh: SimpleNamespace
) -> None:
    """Re-registering the same manifest mid-transfer changes nothing; a missing size is filled on move."""
    ws = workspace
    man = ws.metadata / "EGAD1.tab"
    man.write_text(f"sized.c4gh\t{MD5[0]}\t12\nunsized.c4gh\t{MD5[1]}\n")
    dbh.ok(ws, "register", str(man))
    put(ws, "sized.c4gh", b"half")
    put(ws, "unsized.c4gh", b"part")
    monitor(ws, dbh)
    before = dbh.dump(ws.db_url)
    assert "0 file(s) registered, 2 already registered" in dbh.ok(ws, "register", str(man)).stdout
    assert dbh.dump(ws.db_url) == before
    put(ws, "sized.c4gh", b"half and more")
    put(ws, "unsized.c4gh", b"partial file")
    for _ in range(3):
        monitor(ws, dbh)
    files = {f["file_name"]: f for f in dbh.connect(ws.db_url).files()}
    assert (files["sized.c4gh"]["status"], files["sized.c4gh"]["size"]) == ("received", 12)
    assert files["unsized.c4gh"]["status"] == "received"
    assert files["unsized.c4gh"]["size"] == len(b"partial file")
    assert dbh.connect(ws.db_url).datasets("EGAD1")[0]["n_bytes"] == 12 + len(b"partial file")
    before = dbh.dump(ws.db_url)
    dbh.ok(ws, "register", str(man))
    assert dbh.dump(ws.db_url) == before
