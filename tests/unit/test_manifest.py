"""Manifest parsing (pure): the seed's tab format and EGA JSON, and every refusal with its line number."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from legampi import manifest
from legampi.manifest import MAX_LINE_BYTES, ManifestError, load, parse_ega_json, parse_tab, safe_file_name

MD5 = "0123456789abcdef0123456789abcdef"
MD5B = "fedcba9876543210fedcba9876543210"
SHA = "ab" * 32
E_ACUTE = "\u00e9"  # two bytes in UTF-8


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


def test_tab_bom_and_crlf_never_reach_a_name(tmp_path: Path) -> None:
    """A Windows editor's BOM + CRLF (issue 12, finding 5): the first name is the name, nothing more."""
    body = f"first.bam.c4gh\t{MD5}\r\n# note\r\n\r\nsecond.bam.c4gh\t{MD5B}\t12\t{SHA}\r\n"
    for text in ("\ufeff" + body, body, "\ufeff" + body.replace("\r\n", "\n")):
        entries = parse_tab(text, "DS.tab")
        assert [(e["file_name"], e["md5"], e["size"], e["sha256"], e["line"]) for e in entries] == [
            ("first.bam.c4gh", MD5, None, None, 1),
            ("second.bam.c4gh", MD5B, 12, SHA, 4),
        ]
    path = tmp_path / "DS.tab"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    ds, entries = load(path)
    assert ds == "DS" and [e["file_name"] for e in entries] == ["first.bam.c4gh", "second.bam.c4gh"]


def test_tab_bom_inside_the_manifest_is_refused() -> None:
    """Only the manifest's own BOM is skipped: one pasted in front of a later line is not part of a name."""
    assert "DS.tab:2: " in refused_tab(f"a\t{MD5}\n\ufeffb\t{MD5}\n") and "U+FEFF" in refused_tab(
        f"\ufeff\ufeffb\t{MD5}"
    )


@pytest.mark.parametrize("char", ["\x01", "\x1b", "\x7f", "\x85", "\x9b", "\r", "\u2028"])
def test_tab_control_characters_in_names_are_refused(char: str) -> None:
    msg = refused_tab(f"# header\n\nok.c4gh\t{MD5}\nbad{char}name.c4gh\t{MD5}\n")
    assert msg.startswith("DS.tab:4: ") and f"U+{ord(char):04X} at position 4" in msg


def test_name_length_bounds() -> None:
    ok = "d/" + "x" * 255
    assert parse_tab(f"{ok}\t{MD5}\n", "m")[0]["file_name"] == ok
    assert "component longer than 255 bytes" in refused_tab(f"a\t{MD5}\nd/{'x' * 256}\t{MD5}\n")
    assert "component longer than 255 bytes" in refused_tab(f"a\t{MD5}\n{E_ACUTE * 128}\t{MD5}\n")  # 256 bytes
    deep = "/".join(["y" * 200] * 21)  # 4220 bytes, every component short
    msg = refused_tab(f"a\t{MD5}\n{deep}\t{MD5}\n")
    assert msg.startswith("DS.tab:2: ") and "longer than 4096 bytes" in msg and len(msg) < 300


def test_tab_line_length_bound_counts_bytes_without_the_line_end() -> None:
    comment = "#" + "c" * (MAX_LINE_BYTES - 1)
    assert parse_tab(f"{comment}\r\na\t{MD5}\r\n{comment}", "m")[0]["line"] == 2
    for end in ("", "\n", "\r\n"):
        msg = refused_tab(f"a\t{MD5}\n{comment}c{end}b\t{MD5}\n")
        assert msg == f"DS.tab:2: line longer than {MAX_LINE_BYTES} bytes; refused"


def test_a_64_mib_line_is_refused_not_registered(tmp_path: Path) -> None:
    """Issue 12, finding 4: a 64 MiB name used to be registered; now line 2 is refused, nothing returned."""
    path = tmp_path / "DS.tab"
    with open(path, "wb") as fh:
        fh.write(f"ok.c4gh\t{MD5}\n".encode())
        fh.write(b"n" * (64 << 20) + f"\t{MD5}\n".encode())
    with pytest.raises(ManifestError) as info:
        load(path)
    assert str(info.value) == f"{path}:2: line longer than {MAX_LINE_BYTES} bytes; refused"


def test_an_endless_line_is_refused_without_reading_it_all() -> None:
    """/dev/zero is one line that never ends: only a bounded read can refuse it. Run in a child with 1 GiB of
    address space and a timeout, so a regression fails this test instead of eating the machine's memory."""
    code = "from pathlib import Path; from legampi.manifest import load; load(Path('/dev/zero'), 'DS')"
    limit = 1 << 30
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
    )
    assert r.returncode == 1
    assert f"ManifestError: /dev/zero:1: line longer than {MAX_LINE_BYTES} bytes; refused" in r.stderr


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    tab = tmp_path / "DS.tab"
    tab.write_bytes(f"a\t{MD5}\n# fine\nlatin\xe9.c4gh\t{MD5}\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=rf"^{tab}:3: not valid UTF-8 \(byte 0xe9 at byte 6 of the line\)$"):
        load(tab)
    js = tmp_path / "m.json"
    js.write_bytes(b'[\n{"fileId": "F", "fileName": "a\xff"}\n]')
    with pytest.raises(ManifestError, match=rf"^{js}:2: not valid UTF-8 \(byte 0xff\)$"):
        load(js)


def test_json_with_bom_and_crlf_is_read(tmp_path: Path) -> None:
    js = tmp_path / "m.json"
    js.write_bytes(
        b"\xef\xbb\xbf" + json.dumps([ega(), ega(fileId="F2", fileName="b")], indent=1).replace("\n", "\r\n").encode()
    )
    ds, entries = load(js)
    assert ds == "EGAD00000000001" and [(e["file_name"], e["line"]) for e in entries] == [
        ("x/y.bam.c4gh", 2),
        ("b", 14),
    ]
    assert parse_ega_json("\ufeff" + json.dumps([ega()]), "api")[1][0]["md5"] == MD5


def test_json_over_the_size_bound_is_refused_before_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    js = tmp_path / "m.json"
    js.write_text(json.dumps([ega()]))
    monkeypatch.setattr(manifest, "MAX_JSON_BYTES", js.stat().st_size)
    assert load(js)[1][0]["md5"] == MD5
    monkeypatch.setattr(manifest, "MAX_JSON_BYTES", js.stat().st_size - 1)
    monkeypatch.setattr(manifest.json, "loads", lambda *a, **k: pytest.fail("parsed"))
    with pytest.raises(ManifestError, match=rf"^{js}: JSON manifest larger than {js.stat().st_size - 1} bytes"):
        load(js)
    assert manifest.MAX_JSON_BYTES  # the real bound is documented in the module and in docs


def test_entry_count_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifest, "MAX_ENTRIES", 2)
    assert len(parse_tab(f"a\t{MD5}\nb\t{MD5}\n", "m")) == 2
    assert refused_tab(f"a\t{MD5}\nb\t{MD5}\n#\nc\t{MD5}\n").startswith("DS.tab:4: more than 2 files")
    with pytest.raises(ManifestError, match="^j:1: more than 2 files"):
        parse_ega_json(json.dumps([ega(fileId=f"F{i}", fileName=f"n{i}") for i in range(3)]), "j")


def test_json_that_python_cannot_hold_is_refused_cleanly() -> None:
    with pytest.raises(ManifestError, match="^j: not usable JSON: RecursionError"):
        parse_ega_json("[" * 100_000 + "]" * 100_000, "j")
    with pytest.raises(ManifestError, match="^j: not usable JSON: ValueError"):
        parse_ega_json("[" + "9" * 5000 + "]", "j")


def test_tab_duplicate_names_in_one_manifest() -> None:
    msg = refused_tab(f"a\t{MD5}\nb\t{MD5}\na\t{MD5B}\n")
    assert msg.startswith("DS.tab:3: ") and "already given on line 1" in msg


TMD5 = "00112233445566778899aabbccddeeff"  # md5 of the encrypted file as transferred (EGA's `checksum`)


def ega(**over: object) -> dict:
    """One file object with EGA's real semantics: `checksum` of the encrypted file, plaintext `unencrypted*`."""
    obj = {
        "fileId": "EGAF00000000001",
        "datasetId": "EGAD00000000001",
        "fileName": "x/y.bam.c4gh",
        "displayFileName": "y.bam.c4gh",
        "fileSize": 5_000_000_000_000,
        "checksum": TMD5,
        "checksumType": "MD5",
        "unencryptedChecksum": MD5,
        "unencryptedChecksumType": "MD5",
        "fileStatus": "available",
    }
    obj.update(over)
    return {k: v for k, v in obj.items() if v is not None}


def fields(e: dict) -> tuple:
    return (e["file_id"], e["md5"], e["sha256"], e["transfer_checksum"], e["transfer_checksum_type"], e["size"])


def test_ega_json_checksums_by_their_meaning() -> None:
    """`checksum` is the encrypted file as transferred, never the plaintext md5 (issue 12, finding 6)."""
    items = [
        ega(),
        ega(fileId="F2", fileName="b", checksum=SHA.upper(), checksumType="SHA256", unencryptedChecksumType=None),
        ega(fileId="F3", fileName="c", unencryptedChecksum=SHA, unencryptedChecksumType="sha256"),
        ega(fileId="F4", fileName="d", checksumType=None),  # MD5 unless stated
    ]
    ds, entries = parse_ega_json(json.dumps(items), "api")
    assert ds == "EGAD00000000001"
    assert [fields(e) for e in entries] == [
        ("EGAF00000000001", MD5, None, TMD5, "md5", 5_000_000_000_000),
        ("F2", MD5, None, SHA, "sha256", 5_000_000_000_000),
        ("F3", None, SHA, TMD5, "md5", 5_000_000_000_000),
        ("F4", MD5, None, TMD5, "md5", 5_000_000_000_000),
    ]


def test_ega_json_with_only_the_encrypted_checksum_is_refused() -> None:
    obj = ega(unencryptedChecksum=None, unencryptedChecksumType=None)
    with pytest.raises(ManifestError) as info:
        parse_ega_json(json.dumps([obj]), "meta.json")
    msg = str(info.value)
    assert msg.startswith("meta.json:1: item 1: ") and "ENCRYPTED file as transferred" in msg
    assert "`unencryptedChecksum`" in msg


def test_ega_json_older_plaintext_keys_still_read() -> None:
    """fileMd5 / sha256 name the plaintext explicitly: still accepted, with or without a transfer checksum."""
    plain = ega(checksum=None, checksumType=None, unencryptedChecksum=None, unencryptedChecksumType=None)
    _, [a, b] = parse_ega_json(
        json.dumps([dict(plain, fileMd5=MD5, sha256=SHA), dict(plain, fileId="F2", fileName="z", fileMd5=MD5B)]), "j"
    )
    assert fields(a) == ("EGAF00000000001", MD5, SHA, None, None, 5_000_000_000_000)
    assert fields(b) == ("F2", MD5B, None, None, None, 5_000_000_000_000)
    _, [c] = parse_ega_json(json.dumps([ega(fileMd5=MD5.upper(), unencryptedChecksum=None)]), "j")
    assert fields(c) == ("EGAF00000000001", MD5, None, TMD5, "md5", 5_000_000_000_000)


def test_ega_json_wrapped_in_an_object_with_line_numbers() -> None:
    ds, entries = parse_ega_json(json.dumps({"files": [ega()]}), "j")
    assert ds == "EGAD00000000001" and len(entries) == 1
    text = json.dumps({"response": {"numTotalResults": 2, "result": [ega(), ega(fileId="F2", fileName="b")]}}, indent=1)
    _, entries = parse_ega_json(text, "j")
    lines = text.split("\n")
    assert [e["line"] for e in entries] == [i + 1 for i, s in enumerate(lines) if s.strip() == "{"][1:]
    text = '{"files": [], "x": {"files": 1},\n "files": [\n\n' + json.dumps(ega()) + "]}"  # the last key wins
    assert [e["line"] for e in parse_ega_json(text, "j")[1]] == [4]


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        (ega(fileId=None), "missing fileId"),
        (ega(fileName=None), "missing fileName"),
        (ega(checksum="abc"), "bad checksum (md5) 'abc'"),
        (ega(unencryptedChecksum="abc"), "bad unencryptedChecksum (md5) 'abc'"),
        (ega(unencryptedChecksumType="SHA256"), "bad unencryptedChecksum (sha256)"),
        (ega(checksumType="SHA1"), "unsupported checksumType 'SHA1'"),
        (ega(unencryptedChecksumType="CRC32"), "unsupported unencryptedChecksumType 'CRC32'"),
        (ega(fileMd5=MD5B), "fileMd5 " + MD5B + " contradicts the plaintext md5 " + MD5),
        (ega(fileName="/etc/passwd"), "absolute path"),
        (ega(fileName="a/../../b"), "'..'"),
        (ega(fileSize="huge"), "bad size"),
        (ega(fileSize="9" * 5000), "bad size"),
        (ega(checksum=None, unencryptedChecksum=None), "no plaintext checksum"),
        (ega(fileName="a\r\nb"), "U+000D"),
        (ega(fileName="a\tb"), "U+0009"),
        (ega(fileName="x\u0085y"), "U+0085"),
        (ega(fileName="\ufeffy.c4gh"), "U+FEFF"),
        (ega(fileName="bad\ud800.c4gh"), "lone surrogate (not valid UTF-8) U+D800"),
        (ega(fileId="EGAF\x1b[31m"), "fileId 'EGAF\\x1b[31m' contains the character U+001B"),
        (ega(datasetId="D" * 2000), "datasetId 'DDDD"),
    ],
)
def test_ega_json_refusals_name_the_line_and_item(obj: dict, words: str) -> None:
    good = ega(fileId="EGAF9", fileName="fine.c4gh")
    text = json.dumps([good, obj], indent=1)
    line = [i + 1 for i, s in enumerate(text.split("\n")) if s == " {"][1]
    with pytest.raises(ManifestError) as info:
        parse_ega_json(text, "meta.json")
    assert str(info.value).startswith(f"meta.json:{line}: item 2: ") and words in str(info.value)
    assert len(str(info.value)) < 600


def test_ega_json_refuses_garbage_and_mixed_datasets() -> None:
    with pytest.raises(ManifestError, match=r"meta.json:3: not valid JSON"):
        parse_ega_json('[\n{"fileId": "a",\n]', "meta.json")
    with pytest.raises(ManifestError, match=r"^meta.json:2: not valid JSON: Expecting ',' delimiter$"):
        parse_ega_json("[{}\n {}]", "meta.json")
    with pytest.raises(ManifestError, match=r"^meta.json:3: not valid JSON: Extra data$"):
        parse_ega_json("[]\n\n]", "meta.json")
    with pytest.raises(ManifestError, match=r"^meta.json:1: not valid JSON: Expecting value$"):
        parse_ega_json("[{},]", "meta.json")
    with pytest.raises(ManifestError, match=r"^meta.json:1: not valid JSON"):
        parse_ega_json('{"files": [}', "meta.json")
    assert parse_ega_json("[ ]", "meta.json") == (None, [])
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


def test_safe_file_name() -> None:
    assert safe_file_name("a/b/c d/\u00fc.c4gh", "w") == "a/b/c d/\u00fc.c4gh"
    for bad in ("", "/x", "x/../../y", "..", "a\x00b", "a\x01b", "a\x7fb", "a\x9fb", "x" * 256, "a/" * 2049):
        with pytest.raises(ManifestError):
            safe_file_name(bad, "w")
