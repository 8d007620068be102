"""`legampi register`: tab and EGA JSON manifests, one transaction, idempotent, refusals write nothing."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import Workspace

MD5 = [f"{i:x}" * 32 for i in range(1, 10)]
SHA = [f"{i:x}" * 64 for i in range(1, 10)]


def tab(ws: Workspace, name: str, text: str) -> Path:
    path = ws.metadata / name
    path.write_text(text, encoding="utf-8")
    return path


def test_tab_manifest_fills_file_filedataset_and_dataset_log(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    man = tab(
        ws,
        "EGAD00000000001.tab",
        f"# dataset one\n\na/b/c/one.bam.c4gh\t{MD5[0]}\t1000\n"
        f"two with space \u00e9.cip\t{MD5[1].upper()}\t2000\t{SHA[1]}\n"
        f"three.gpg\t{MD5[2]}\n",
    )
    r = ws.legampi("register", str(man))  # the real executable
    assert "dataset EGAD00000000001: 3 file(s) registered, 0 already registered" in r.stdout
    db = dbh.connect(ws.db_url)
    files = {f["file_id"]: f for f in db.files()}
    assert set(files) == {"a/b/c/one.bam.c4gh", "two with space \u00e9.cip", "three.gpg"}
    one, two, three = (files[k] for k in ("a/b/c/one.bam.c4gh", "two with space \u00e9.cip", "three.gpg"))
    assert (one["dataset_id"], one["md5"], one["size"], one["sha256"], one["status"]) == (
        "EGAD00000000001",
        MD5[0],
        1000,
        None,
        "pending",
    )
    assert (two["md5"], two["sha256"], two["size"]) == (MD5[1], SHA[1], 2000)  # checksums stored lower case
    assert three["size"] is None
    fd = db.query("SELECT dataset_id, file_id FROM filedataset ORDER BY file_id")
    assert [(x["dataset_id"], x["file_id"]) for x in fd] == sorted(
        [("EGAD00000000001", k) for k in files], key=lambda t: t[1]
    )
    [ds] = db.datasets()
    assert (ds["dataset_id"], ds["n_files"], ds["n_bytes"]) == ("EGAD00000000001", 3, 3000)
    assert ds["date_requested"] is not None
    assert ds["date_download_start"] is ds["date_download_end"] is ds["date_processing_end"] is None
    events = db.events(dataset_id="EGAD00000000001")
    assert sorted((e["file_id"], e["event"], e["status"]) for e in events) == sorted(
        (k, "registered", "pending") for k in files
    )


def test_dataset_option_overrides_the_base_name(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    man = tab(ws, "whatever.tsv", f"x.c4gh\t{MD5[0]}\n")
    assert "dataset EGAD7: 1 file(s)" in dbh.ok(ws, "register", str(man), "--dataset", "EGAD7").stdout
    assert [d["dataset_id"] for d in dbh.connect(ws.db_url).datasets()] == ["EGAD7"]


def test_ega_json_manifest(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    objs = [
        {
            "fileId": "EGAF00000000001",
            "datasetId": "EGAD00000000099",
            "fileName": "s1/r1.bam.c4gh",
            "fileSize": 5_000_000_000_000,
            "checksum": MD5[5],  # EGA: of the encrypted file as transferred
            "checksumType": "MD5",
            "unencryptedChecksum": SHA[0],  # EGA: of the plaintext
            "unencryptedChecksumType": "SHA256",
            "fileStatus": "available",
        },
        {
            "fileId": "EGAF00000000002",
            "datasetId": "EGAD00000000099",
            "fileName": "s1/r2.bam.cip",
            "fileSize": 77,
            "fileMd5": MD5[1],
        },
    ]
    man = ws.metadata / "meta.json"
    man.write_text(json.dumps(objs))
    assert "dataset EGAD00000000099: 2 file(s) registered" in dbh.ok(ws, "register", str(man)).stdout
    db = dbh.connect(ws.db_url)
    got = {f["file_id"]: (f["dataset_id"], f["file_name"], f["size"], f["md5"], f["sha256"]) for f in db.files()}
    assert got == {
        "EGAF00000000001": ("EGAD00000000099", "s1/r1.bam.c4gh", 5_000_000_000_000, None, SHA[0]),
        "EGAF00000000002": ("EGAD00000000099", "s1/r2.bam.cip", 77, MD5[1], None),
    }
    [ds] = db.datasets()
    assert ds["n_bytes"] == 5_000_000_000_077 and ds["n_files"] == 2


def test_registering_twice_changes_nothing(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    man = tab(ws, "DS1.tab", f"a.c4gh\t{MD5[0]}\t10\t{SHA[0]}\nsub/b.c4gh\t{MD5[1]}\n")
    dbh.ok(ws, "register", str(man))
    before = dbh.dump(ws.db_url)
    r = dbh.ok(ws, "register", str(man))
    assert "0 file(s) registered, 2 already registered" in r.stdout
    assert dbh.dump(ws.db_url) == before
    # the same files with upper-case checksums are the same files
    tab(ws, "DS1.tab", f"a.c4gh\t{MD5[0].upper()}\t10\t{SHA[0].upper()}\nsub/b.c4gh\t{MD5[1]}\n")
    dbh.ok(ws, "register", str(man))
    assert dbh.dump(ws.db_url) == before


def test_a_manifest_can_grow(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    man = tab(ws, "DS1.tab", f"a.c4gh\t{MD5[0]}\t10\n")
    dbh.ok(ws, "register", str(man))
    tab(ws, "DS1.tab", f"a.c4gh\t{MD5[0]}\t10\nb.c4gh\t{MD5[1]}\t20\n")
    assert "1 file(s) registered, 1 already registered" in dbh.ok(ws, "register", str(man)).stdout
    [ds] = dbh.connect(ws.db_url).datasets()
    assert (ds["n_files"], ds["n_bytes"]) == (2, 30)


def refuse(ws: Workspace, dbh: SimpleNamespace, man: Path, *extra: str) -> str:
    """Register must fail, say why on stderr, and leave every table exactly as it was."""
    before = dbh.dump(ws.db_url)
    r = dbh.run(ws, "register", str(man), *extra)
    assert r.returncode == 1, r.output
    assert r.stdout == ""
    assert dbh.dump(ws.db_url) == before
    return r.stderr


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("just-a-name", "want 2 to 4 tab-separated columns"),
        (f"c.c4gh\t{MD5[2][:-1]}", "bad md5"),
        (f"c.c4gh\t{'z' * 32}", "bad md5"),
        (f"c.c4gh\t{MD5[2]}\t5\t{SHA[2]}0", "bad sha256"),
        (f"/data/c.c4gh\t{MD5[2]}", "absolute path"),
        (f"sub/../../c.c4gh\t{MD5[2]}", "contains '..'"),
    ],
)
def test_bad_lines_are_refused_with_line_number(
    workspace: Workspace, dbh: SimpleNamespace, line: str, words: str
) -> None:
    ws = workspace
    dbh.ok(ws, "register", str(tab(ws, "DS0.tab", f"old.c4gh\t{MD5[0]}\n")))
    man = tab(ws, "DS1.tab", f"# good lines first\na.c4gh\t{MD5[0]}\nb.c4gh\t{MD5[1]}\n{line}\n")
    err = refuse(ws, dbh, man)
    assert f"{man}:4: " in err and words in err


def test_contradicting_checksum_is_refused(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    dbh.ok(ws, "register", str(tab(ws, "DS1.tab", f"a.c4gh\t{MD5[0]}\t10\nb.c4gh\t{MD5[1]}\n")))
    # new files before the contradiction must not be written either (one transaction)
    man = tab(ws, "DS1.tab", f"n1.c4gh\t{MD5[4]}\nn2.c4gh\t{MD5[5]}\nb.c4gh\t{MD5[2]}\n")
    err = refuse(ws, dbh, man)
    assert f"{man}:3: " in err and f"registered with md5 {MD5[1]}" in err and MD5[2] in err
    man = tab(ws, "DS1.tab", f"a.c4gh\t{MD5[0]}\t11\n")
    err = refuse(ws, dbh, man)
    assert f"{man}:1: " in err and "size 10" in err


def test_same_file_in_another_dataset_is_refused(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    dbh.ok(ws, "register", str(tab(ws, "DS1.tab", f"a.c4gh\t{MD5[0]}\n")))
    man = tab(ws, "DS2.tab", f"new.c4gh\t{MD5[3]}\na.c4gh\t{MD5[0]}\n")
    err = refuse(ws, dbh, man)
    assert f"{man}:2: " in err and "already registered in dataset DS1, not DS2" in err
    assert [d["dataset_id"] for d in dbh.connect(ws.db_url).datasets()] == ["DS1"]


def test_same_ega_file_id_in_another_dataset_is_refused(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    obj = {"fileId": "EGAF1", "datasetId": "EGAD1", "fileName": "x.c4gh", "fileSize": 1, "fileMd5": MD5[0]}
    first = ws.metadata / "one.json"
    first.write_text(json.dumps([obj]))
    dbh.ok(ws, "register", str(first))
    second = ws.metadata / "two.json"
    second.write_text(json.dumps([dict(obj, datasetId="EGAD2", fileName="y.c4gh")]))
    err = refuse(ws, dbh, second)
    assert f"{second}:1: " in err and "file EGAF1 is already registered in dataset EGAD1, not EGAD2" in err
    # a different file id for a name that is already registered is a contradiction too
    third = ws.metadata / "three.json"
    third.write_text(json.dumps([dict(obj, fileId="EGAF9")]))
    err = refuse(ws, dbh, third)
    assert "file name 'x.c4gh' is already registered as file EGAF1" in err


def test_bad_json_manifests_are_refused(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    man = ws.metadata / "bad.json"
    man.write_text('[{"fileId": "EGAF1", "datasetId": "EGAD1", "fileName": "a", "unencryptedChecksum": "abc"}]')
    err = refuse(ws, dbh, man)
    assert f"{man}:1: item 1: bad unencryptedChecksum (md5) 'abc'" in err
    man.write_text('[{"fileId": "EGAF1",\n')
    assert "not valid JSON" in refuse(ws, dbh, man)
    good = ws.metadata / "good.json"
    good.write_text(json.dumps([{"fileId": "F", "datasetId": "EGAD1", "fileName": "a", "fileMd5": MD5[0]}]))
    assert "is for dataset EGAD1, not EGAD2" in refuse(ws, dbh, good, "--dataset", "EGAD2")


def test_missing_manifest_is_refused(workspace: Workspace, dbh: SimpleNamespace) -> None:
    err = refuse(workspace, dbh, workspace.metadata / "absent.tab")
    assert "absent.tab: cannot read manifest" in err
