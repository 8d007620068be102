"""Manifest parsing (pure): the seed's tab format and EGA JSON, and every refusal with its line number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from legampi.manifest import ManifestError, load, parse_ega_json, parse_tab, safe_relpath

MD5 = "0123456789abcdef0123456789abcdef"
MD5B = "fedcba9876543210fedcba9876543210"
SHA = "ab" * 32


def refused_tab(text: str) -> str:
    with pytest.raises(ManifestError) as info:
        parse_tab(text, "DS.tab")
    return str(info.value)


def test_tab_manifest_with_comments_blank_lines_and_optional_columns() -> None:
    text = (
        f"# dataset DS, made by hand\n\n{'a/b/c/one.bam.c4gh'}\t{MD5}\n"
        f"  # indented comment\n"
        f"two with spaces.c4gh\t{MD5B.upper()}\t5000000000000\n"
        f"tri\u00e9.cip\t{MD5}\t12\t{SHA}\n\n"
    )
    entries = parse_tab(text, "DS.tab")
    assert [(e["file_id"], e["file_name"], e["md5"], e["size"], e["sha256"], e["line"]) for e in entries] == [
        ("a/b/c/one.bam.c4gh", "a/b/c/one.bam.c4gh", MD5, None, None, 3),
        ("two with spaces.c4gh", "two with spaces.c4gh", MD5B, 5_000_000_000_000, None, 5),
        ("tri\u00e9.cip", "tri\u00e9.cip", MD5, 12, SHA, 6),
    ]


def test_tab_names_are_normalised() -> None:
    assert parse_tab(f"./x/./y.c4gh\t{MD5}\n", "m")[0]["file_name"] == "x/y.c4gh"


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("only-a-name", "want 2 to 4 tab-separated columns"),
        (f"a\t{MD5}\t1\t{SHA}\textra", "got 5"),
        (f"a {MD5}", "want 2 to 4"),  # spaces are not tabs
        ("a\t0123456789abcdef0123456789abcde", "bad md5"),  # 31 digits
        ("a\t0123456789abcdef0123456789abcdefa", "bad md5"),  # 33 digits
        ("a\t0123456789abcdef0123456789abcdeg", "bad md5"),  # not hex
        (f"a\t{SHA}", "bad md5"),  # a sha256 where the md5 goes
        (f"a\t{MD5}\t1\t{SHA[:-1]}", "bad sha256"),  # 63 digits
        (f"a\t{MD5}\tbig", "bad size"),
        (f"a\t{MD5}\t-4", "negative size"),
        ("a\t\t1", "missing md5"),
        (f"/abs/path.c4gh\t{MD5}", "absolute path"),
        (f"../escape.c4gh\t{MD5}", "'..'"),
        (f"a/../../escape.c4gh\t{MD5}", "'..'"),
        (f" lead.c4gh\t{MD5}", "white space"),
        (f"back\\slash\t{MD5}", "backslash"),
        (f".\t{MD5}", "names no file"),
    ],
)
def test_tab_refusals_name_the_line_and_why(line: str, words: str) -> None:
    msg = refused_tab(f"# header\n\nok.c4gh\t{MD5}\n{line}\n")
    assert msg.startswith("DS.tab:4: ")
    assert words in msg


def test_tab_duplicate_names_in_one_manifest() -> None:
    msg = refused_tab(f"a\t{MD5}\nb\t{MD5}\na\t{MD5B}\n")
    assert msg.startswith("DS.tab:3: ") and "already given on line 1" in msg


def ega(**over: object) -> dict:
    obj = {
        "fileId": "EGAF00000000001",
        "datasetId": "EGAD00000000001",
        "fileName": "x/y.bam.c4gh",
        "fileSize": 5_000_000_000_000,
        "checksum": MD5,
        "checksumType": "MD5",
        "unencryptedChecksum": SHA,
        "unencryptedChecksumType": "SHA256",
        "fileStatus": "available",
    }
    obj.update(over)
    return {k: v for k, v in obj.items() if v is not None}


def test_ega_json_api_shape() -> None:
    second = ega(
        fileId="EGAF2", fileName="z.cip", checksum=MD5B.upper(), unencryptedChecksum=None, unencryptedChecksumType=None
    )
    ds, entries = parse_ega_json(json.dumps([ega(), second]), "api")
    assert ds == "EGAD00000000001"
    assert [(e["file_id"], e["file_name"], e["size"], e["md5"], e["sha256"]) for e in entries] == [
        ("EGAF00000000001", "x/y.bam.c4gh", 5_000_000_000_000, MD5, SHA),
        ("EGAF2", "z.cip", 5_000_000_000_000, MD5B, None),
    ]


def test_ega_json_file_md5_and_sha256_fields() -> None:
    obj = ega(
        checksum=None,
        checksumType=None,
        unencryptedChecksum=None,
        unencryptedChecksumType=None,
        fileMd5=MD5,
        sha256=SHA,
    )
    _, [e] = parse_ega_json(json.dumps([obj]), "j")
    assert (e["md5"], e["sha256"]) == (MD5, SHA)


def test_ega_json_wrapped_in_an_object() -> None:
    ds, entries = parse_ega_json(json.dumps({"files": [ega()]}), "j")
    assert ds == "EGAD00000000001" and len(entries) == 1


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        (ega(fileId=None), "missing fileId"),
        (ega(fileName=None), "missing fileName"),
        (ega(checksum="abc"), "bad md5"),
        (ega(checksumType="SHA1"), "unsupported checksumType"),
        (ega(fileName="/etc/passwd"), "absolute path"),
        (ega(fileName="a/../../b"), "'..'"),
        (ega(fileSize="huge"), "bad size"),
        (ega(checksum=None, unencryptedChecksum=None), "no plaintext checksum"),
    ],
)
def test_ega_json_refusals_name_the_item(obj: dict, words: str) -> None:
    good = ega(fileId="EGAF9", fileName="fine.c4gh")
    with pytest.raises(ManifestError) as info:
        parse_ega_json(json.dumps([good, obj]), "meta.json")
    assert str(info.value).startswith("meta.json:item 2: ") and words in str(info.value)


def test_ega_json_refuses_garbage_and_mixed_datasets() -> None:
    with pytest.raises(ManifestError, match=r"meta.json:3: not valid JSON"):
        parse_ega_json('[\n{"fileId": "a",\n]', "meta.json")
    with pytest.raises(ManifestError, match="want a JSON list"):
        parse_ega_json('"just a string"', "meta.json")
    with pytest.raises(ManifestError, match="several datasets"):
        parse_ega_json(json.dumps([ega(), ega(fileId="F2", fileName="b", datasetId="EGAD2")]), "meta.json")


def test_load_takes_the_dataset_id_from_option_json_or_base_name(tmp_path: Path) -> None:
    tab = tmp_path / "EGAD00000000042.tab"
    tab.write_text(f"a.c4gh\t{MD5}\n")
    assert load(tab)[0] == "EGAD00000000042"
    assert load(tab, "OTHER")[0] == "OTHER"
    js = tmp_path / "whatever.json"
    js.write_text(json.dumps([ega()]))
    assert load(js)[0] == "EGAD00000000001"
    with pytest.raises(ManifestError, match="is for dataset EGAD00000000001, not EGAD9"):
        load(js, "EGAD9")
    with pytest.raises(ManifestError, match="cannot read manifest"):
        load(tmp_path / "absent.tab")


def test_safe_relpath() -> None:
    assert safe_relpath("a/b/c d/\u00fc.c4gh", "w") == "a/b/c d/\u00fc.c4gh"
    for bad in ("", "/x", "x/../../y", "..", "a\x00b"):
        with pytest.raises(ManifestError):
            safe_relpath(bad, "w")
