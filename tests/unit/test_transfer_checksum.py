"""The transfer checksum (EGA `checksum`: of the file as transferred) checked in the worker's one read.

Inputs are made by the crypt4gh CLI, openssl and gpg; a damaged transfer is simulated by changing bytes of
the encrypted file after its transfer checksum was taken, as a faulty network or disk would.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from legampi.formats import crypt4gh as c4gh
from legampi.stream import QUARANTINE_KINDS, FileTask, process_file

KINDS = ["c4gh-full", "c4gh-header", "cip", "gpg", "plain"]


def make(
    kind: str, ws, h, plaintexts, gnupg_home: Path | None, size: int = 300_000, stem: str = "t/sample.bam"
) -> tuple[str, bytes]:
    """An input of KIND in processing/ (made by an independent tool); returns (rel, plaintext)."""
    src, data = plaintexts.make(size)
    if kind.startswith("c4gh"):
        rel = stem + ".c4gh"
        h.c4gh_encrypt(src, ws.keys.inbox.pub, ws.source(rel))
    elif kind == "cip":
        rel = stem + ".cip"
        h.openssl_cip(src, h.LEGACY_PASSWORD, "aes128", ws.source(rel))
    elif kind == "gpg":
        rel = stem + ".gpg"
        h.gpg_encrypt(src, gnupg_home, ws.source(rel))
    else:
        rel = stem
        ws.source(rel).parent.mkdir(parents=True, exist_ok=True)
        ws.source(rel).write_bytes(data)
    return rel, data


def with_transfer(task: FileTask, algo: str, content: bytes) -> FileTask:
    return dataclasses.replace(
        task, transfer_checksum=hashlib.new(algo, content).hexdigest(), transfer_checksum_type=algo
    )


def ctx_for(kind: str, ws, gnupg_home: Path | None, **kw):
    return ws.ctx(gnupg_home=gnupg_home, reencrypt="header" if kind == "c4gh-header" else "full", **kw)


def damage(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("algo", ["md5", "sha256"])
@pytest.mark.parametrize("kind", KINDS)
def test_intact_transfer_is_archived(kind: str, algo: str, ws, keys, plaintexts, h, request) -> None:
    gnupg_home = request.getfixturevalue("gnupg_home") if kind == "gpg" else None
    rel, data = make(kind, ws, h, plaintexts, gnupg_home)
    task = with_transfer(h.task_for(rel, data), algo, ws.source(rel).read_bytes())
    result = process_file(task, ctx_for(kind, ws, gnupg_home))
    assert result.status == "available", result.error
    assert h.c4gh_decrypt(Path(result.archive_path), keys.archive.sec) == data
    assert result.bytes_read == ws.source(rel).stat().st_size


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_transfer_fails_as_transfer_corrupt(kind: str, ws, keys, plaintexts, h, request) -> None:
    """A byte changed after the transfer checksum was taken: whatever the format makes of it (MAC error,
    garbage plaintext, a gpg integrity failure), the failure names the damaged transfer, nothing is
    archived, and the source is quarantined (the kind is a content fault)."""
    gnupg_home = request.getfixturevalue("gnupg_home") if kind == "gpg" else None
    rel, data = make(kind, ws, h, plaintexts, gnupg_home)
    sent = ws.source(rel).read_bytes()
    with open(ws.source(rel), "rb") as f:
        offset = c4gh.read_header(f, keys.inbox.secret).size + 70_000 if kind.startswith("c4gh") else 150_000
    damage(ws.source(rel), offset)
    got = ws.source(rel).read_bytes()
    task = with_transfer(h.task_for(rel, data), "md5", sent)
    result = process_file(task, ctx_for(kind, ws, gnupg_home, quarantine=ws.quarantine))
    assert result.status == "failed" and result.error_kind == "transfer_corrupt", result.error
    expected = (
        f"{rel}: transferred file md5 mismatch: manifest expects {hashlib.md5(sent).hexdigest()}, "
        f"computed {hashlib.md5(got).hexdigest()}; re-transfer it"
    )
    assert result.error.startswith(expected), result.error
    assert "transfer_corrupt" in QUARANTINE_KINDS
    assert result.quarantined_to == str(ws.quarantine / rel)
    assert (ws.quarantine / rel).read_bytes() == got and not ws.source(rel).exists()
    assert ws.end_files() == []


def test_damage_without_a_quarantine_leaves_the_source(ws, keys, plaintexts, h) -> None:
    rel, data = make("c4gh-full", ws, h, plaintexts, None)
    sent = ws.source(rel).read_bytes()
    damage(ws.source(rel), len(sent) - 10)  # in the last segment's MAC
    before = h.snapshot(ws.source(rel))
    result = process_file(with_transfer(h.task_for(rel, data), "sha256", sent), ws.ctx())
    assert result.error_kind == "transfer_corrupt" and "transferred file sha256 mismatch" in result.error
    assert result.quarantined_to is None and h.snapshot(ws.source(rel)) == before
    assert ws.end_files() == []


def test_wrong_registered_transfer_checksum_fails_before_the_plaintext_checks(ws, plaintexts, h) -> None:
    """Intact bytes, but not the ones the manifest describes (and a wrong md5 too): the transfer is named."""
    rel, data = make("c4gh-full", ws, h, plaintexts, None)
    task = dataclasses.replace(
        h.task_for(rel, data, md5="2" * 32), transfer_checksum="1" * 32, transfer_checksum_type="md5"
    )
    result = process_file(task, ws.ctx())
    assert result.error_kind == "transfer_corrupt", result.error
    assert f"manifest expects {'1' * 32}, computed {hashlib.md5(ws.source(rel).read_bytes()).hexdigest()}" in (
        result.error
    )
    assert ws.end_files() == []


def test_trailing_bytes_after_a_valid_file_are_caught(ws, plaintexts, h) -> None:
    """Bytes the decryptor never needs (here: appended to a plain file, making its plaintext differ)
    are still part of the transferred file and of its checksum."""
    rel, data = make("plain", ws, h, plaintexts, None, size=70_000)
    with open(ws.source(rel), "ab") as f:
        f.write(b"junk")
    result = process_file(with_transfer(h.task_for(rel, data), "md5", data), ws.ctx())
    assert result.error_kind == "transfer_corrupt", result.error


def test_without_a_transfer_checksum_damage_is_reported_as_before(ws, keys, plaintexts, h) -> None:
    rel, data = make("c4gh-full", ws, h, plaintexts, None)
    with open(ws.source(rel), "rb") as f:
        offset = c4gh.read_header(f, keys.inbox.secret).size + 70_000
    damage(ws.source(rel), offset)
    result = process_file(h.task_for(rel, data), ws.ctx())
    assert result.error_kind == "corrupt" and "segment #1" in result.error
    # and with a transfer checksum that matches the (damaged) bytes, the decryptor's error stands
    matching = with_transfer(h.task_for(rel, data), "md5", ws.source(rel).read_bytes())
    result = process_file(matching, ws.ctx())
    assert result.error_kind == "corrupt" and "segment #1" in result.error
    assert ws.end_files() == []


def test_res_decryption_checks_the_transfer_before_sending(ws, plaintexts, h, res_server_cls) -> None:
    rel, data = make("cip", ws, h, plaintexts, None)
    sent = ws.source(rel).read_bytes()
    with res_server_cls(root=ws.processing) as srv:
        ctx = ws.ctx(decrypt_via="res", res_url=srv.url, res_source_key=h.LEGACY_PASSWORD, legacy_password=None)
        ok = process_file(with_transfer(h.task_for(rel, data), "md5", sent), ctx)
        assert ok.status == "available", ok.error
        rel2, data2 = make("cip", ws, h, plaintexts, None, stem="t/other.bam")
        sent2 = ws.source(rel2).read_bytes()
        damage(ws.source(rel2), 5000)
        bad = process_file(with_transfer(h.task_for(rel2, data2), "md5", sent2), ctx)
    assert bad.error_kind == "transfer_corrupt", bad.error
    assert [p.name for p in ws.end_files()] == ["sample.bam.c4gh", "sample.bam.c4gh.sha256"]


def test_bad_registered_transfer_checksum_is_a_checksum_error(ws, plaintexts, h) -> None:
    rel, data = make("plain", ws, h, plaintexts, None, size=10)
    task = dataclasses.replace(h.task_for(rel, data), transfer_checksum="xyz", transfer_checksum_type="md5")
    result = process_file(task, ws.ctx())
    assert result.error_kind == "checksum" and "transfer md5" in result.error
