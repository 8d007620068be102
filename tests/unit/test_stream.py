"""process_file end to end: archived copies, sidecars, and every failure leaving nothing behind."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import stat
import subprocess
from pathlib import Path

import pytest

from legampi.archive import is_temp_name
from legampi.formats import crypt4gh as c4gh
from legampi.keys import fingerprint
from legampi.stream import FileResult, FileTask, PipelineContext, process_file, process_file_overlapped, start_file

SIZES = [0, 1, 65535, 65536, 65537, 3 * 1024 * 1024 + 123]
FORMATS = ["c4gh-full", "c4gh-header", "cip-aes128", "cip-aes256", "gpg", "plain", "res-aes128"]


def make_input(kind: str, src: Path, ws, h, gnupg_home: Path | None, rel_stem: str = "a/b/sample.bam") -> str:
    """Encrypt the plaintext fixture `src` into processing/ as `kind`; return its rel path."""
    if kind.startswith("c4gh"):
        rel = rel_stem + ".c4gh"
        h.c4gh_encrypt(src, ws.keys.inbox.pub, ws.source(rel))
    elif kind.startswith(("cip", "res")):
        rel = rel_stem + ".cip"
        h.openssl_cip(src, h.LEGACY_PASSWORD, kind.split("-")[1], ws.source(rel))
    elif kind == "gpg":
        rel = rel_stem + ".gpg"
        h.gpg_encrypt(src, gnupg_home, ws.source(rel))
    else:
        rel = rel_stem
        ws.source(rel).parent.mkdir(parents=True, exist_ok=True)
        ws.source(rel).write_bytes(src.read_bytes())
    return rel


def ctx_for(kind: str, ws, gnupg_home: Path | None, **kw) -> PipelineContext:
    opts = dict(gnupg_home=gnupg_home, reencrypt="header" if kind == "c4gh-header" else "full")
    if kind.startswith("cip"):
        opts["legacy_cipher"] = kind.split("-")[1]
    opts.update(kw)
    return ws.ctx(**opts)


def assert_nothing_archived(ws) -> None:
    leftovers = ws.end_files()
    assert leftovers == [], f"end_storage should hold no file, found {leftovers}"


def sha256sum_check(sidecar: Path, tool: str = "sha256sum") -> None:
    p = subprocess.run([tool, "-c", sidecar.name], cwd=sidecar.parent, capture_output=True, text=True)
    assert p.returncode == 0 and ": OK" in p.stdout, p.stdout + p.stderr


# ------------------------------------------------------------------ successful ingestion
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", FORMATS)
def test_roundtrip(kind: str, size: int, ws, keys, plaintexts, h, res_server_cls, request) -> None:
    gnupg_home = request.getfixturevalue("gnupg_home") if kind == "gpg" else None
    src, data = plaintexts.make(size)
    rel = make_input(kind, src, ws, h, gnupg_home)
    before = h.snapshot(ws.source(rel))
    task = h.task_for(rel, data)
    if kind.startswith("res"):
        with res_server_cls(root=ws.processing) as srv:
            ctx = ctx_for(
                kind,
                ws,
                gnupg_home,
                decrypt_via="res",
                res_url=srv.url,
                res_source_key=h.LEGACY_PASSWORD,
                legacy_password=None,
            )
            result = process_file(task, ctx)
    else:
        result = process_file(task, ctx_for(kind, ws, gnupg_home))
    assert result.status == "available", result.error
    final = ws.end_storage / "a" / "b" / "sample.bam.c4gh"
    assert result.archive_path == str(final)
    assert ws.end_files() == [final, final.with_name("sample.bam.c4gh.sha256")]
    assert h.c4gh_decrypt(final, keys.archive.sec) == data
    sha256sum_check(final.with_name("sample.bam.c4gh.sha256"))
    assert result.md5 == hashlib.md5(data).hexdigest()
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.archive_checksum == hashlib.sha256(final.read_bytes()).hexdigest()
    assert result.archive_checksum_type == "sha256"
    assert result.archive_key == fingerprint(keys.archive.public)
    assert result.plain_size == size and result.archive_size == final.stat().st_size
    assert result.bytes_read == ws.source(rel).stat().st_size
    assert result.error is None and result.error_kind is None
    assert h.snapshot(ws.source(rel)) == before  # source kept for rank 0 to delete after the DB commit
    for p in (final, final.with_name("sample.bam.c4gh.sha256")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o640
    for d in (ws.end_storage / "a", ws.end_storage / "a" / "b"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o750
    if kind == "c4gh-header":  # payload copied byte for byte
        with open(ws.source(rel), "rb") as a, open(final, "rb") as b:
            c4gh.read_header(a, keys.inbox.secret)
            c4gh.read_header(b, keys.archive.secret)
            assert a.read() == b.read()


def test_md5_archive_checksum_and_file_mode(ws, keys, plaintexts, h) -> None:
    src, data = plaintexts.make(100_000)
    rel = make_input("c4gh-full", src, ws, h, None, rel_stem="x.bam")
    ctx = ws.ctx(archive_checksum="md5", file_mode=0o600)
    result = process_file(h.task_for(rel, data, with_sha=False), ctx)
    assert result.status == "available", result.error
    final = ws.end_storage / "x.bam.c4gh"
    side = ws.end_storage / "x.bam.c4gh.md5"
    assert ws.end_files() == [final, side]
    assert result.archive_checksum_type == "md5"
    assert result.archive_checksum == hashlib.md5(final.read_bytes()).hexdigest()
    sha256sum_check(side, "md5sum")
    assert stat.S_IMODE(final.stat().st_mode) == 0o600 and stat.S_IMODE(side.stat().st_mode) == 0o600


def test_archive_name_replaces_configured_extension(ws, plaintexts, h) -> None:
    src, data = plaintexts.make(10)
    rel = make_input("cip-aes128", src, ws, h, None, rel_stem="d/x.vcf.gz")
    result = process_file(h.task_for(rel, data), ws.ctx())
    assert result.status == "available", result.error
    assert result.archive_path == str(ws.end_storage / "d" / "x.vcf.gz.c4gh")


def test_results_and_tasks_pickle(ws) -> None:
    t = FileTask("f", "d", "a/x.c4gh", None, None, 5)
    r = FileResult("f", "a/x.c4gh", "failed", error="e", error_kind="io")
    assert pickle.loads(pickle.dumps(t)) == t and pickle.loads(pickle.dumps(r)) == r


# ------------------------------------------------------------------ failures: nothing archived
def _assert_failed(result: FileResult, ws, rel: str, before, kind: str, *needles: str) -> None:
    assert result.status == "failed"
    assert result.error_kind == kind, result.error
    assert rel in result.error and "\n" not in result.error
    for n in needles:
        assert n in result.error, result.error
    assert result.archive_path is None and result.archive_checksum is None
    assert_nothing_archived(ws)
    assert h_snapshot(ws.source(rel)) == before


def h_snapshot(p: Path):
    return p.read_bytes(), p.stat().st_mtime_ns


def test_md5_mismatch(ws, plaintexts, h) -> None:
    src, data = plaintexts.make(70_000)
    rel = make_input("c4gh-full", src, ws, h, None)
    before = h.snapshot(ws.source(rel))
    found = hashlib.md5(data).hexdigest()
    result = process_file(h.task_for(rel, data, md5="0" * 32), ws.ctx())
    _assert_failed(result, ws, rel, before, "checksum", "md5 mismatch", "0" * 32, found)


def test_sha256_mismatch(ws, plaintexts, h) -> None:
    src, data = plaintexts.make(70_000)
    rel = make_input("c4gh-full", src, ws, h, None)
    before = h.snapshot(ws.source(rel))
    result = process_file(h.task_for(rel, data, sha256="ab" * 32), ws.ctx())
    _assert_failed(result, ws, rel, before, "checksum", "sha256 mismatch", "ab" * 32, hashlib.sha256(data).hexdigest())


def test_invalid_manifest_checksum(ws, plaintexts, h) -> None:
    src, data = plaintexts.make(10)
    rel = make_input("plain", src, ws, h, None, rel_stem="x.bam")
    before = h.snapshot(ws.source(rel))
    result = process_file(h.task_for(rel, md5="not-hex"), ws.ctx())
    _assert_failed(result, ws, rel, before, "checksum", "not a valid md5")


def test_flipped_bit_in_c4gh_payload(ws, keys, plaintexts, h) -> None:
    src, data = plaintexts.make(200_000)
    rel = make_input("c4gh-full", src, ws, h, None)
    raw = bytearray(ws.source(rel).read_bytes())
    with open(ws.source(rel), "rb") as f:
        hsize = c4gh.read_header(f, keys.inbox.secret).size
    raw[hsize + c4gh.CIPHER_SEGMENT_SIZE + 1234] ^= 0x10
    ws.source(rel).write_bytes(bytes(raw))
    before = h.snapshot(ws.source(rel))
    for mode in ("full", "header"):
        result = process_file(h.task_for(rel, data), ws.ctx(reencrypt=mode))
        _assert_failed(result, ws, rel, before, "corrupt", "segment #1", "authentication")


@pytest.mark.parametrize("mode", ["full", "header"])
def test_truncated_c4gh(mode: str, ws, keys, plaintexts, h) -> None:
    src, data = plaintexts.make(200_000)
    rel = make_input("c4gh-full", src, ws, h, None)
    raw = ws.source(rel).read_bytes()
    ws.source(rel).write_bytes(raw[: len(raw) - 5000])
    before = h.snapshot(ws.source(rel))
    result = process_file(h.task_for(rel, data), ws.ctx(reencrypt=mode))
    _assert_failed(result, ws, rel, before, "truncated", "truncated")


def test_c4gh_cut_at_segment_boundary_caught_by_checksum(ws, keys, plaintexts, h) -> None:
    src, data = plaintexts.make(200_000)
    rel = make_input("c4gh-full", src, ws, h, None)
    with open(ws.source(rel), "rb") as f:
        hsize = c4gh.read_header(f, keys.inbox.secret).size
    raw = ws.source(rel).read_bytes()
    ws.source(rel).write_bytes(raw[: hsize + 2 * c4gh.CIPHER_SEGMENT_SIZE])
    before = h.snapshot(ws.source(rel))
    result = process_file(h.task_for(rel, data), ws.ctx())
    _assert_failed(result, ws, rel, before, "checksum", "md5 mismatch")


def test_wrong_inbox_key(ws, keys, plaintexts, h) -> None:
    src, data = plaintexts.make(1000)
    rel = "x.bam.c4gh"
    h.c4gh_encrypt(src, keys.other.pub, ws.source(rel))
    before = h.snapshot(ws.source(rel))
    result = process_file(h.task_for(rel, data), ws.ctx())
    _assert_failed(result, ws, rel, before, "key", "inbox secret key")


def test_wrong_legacy_password(ws, plaintexts, h) -> None:
    src, data = plaintexts.make(5000)
    rel = make_input("cip-aes128", src, ws, h, None)
    before = h.snapshot(ws.source(rel))
    ctx = ws.ctx(legacy_password="Wrong-Legacy-Pw-77")
    result = process_file(h.task_for(rel, data), ctx)
    _assert_failed(result, ws, rel, before, "checksum", "md5 mismatch", "wrong legacy password?")
    assert "Wrong-Legacy-Pw-77" not in result.error and "Wrong-Legacy-Pw-77" not in repr(result)
    assert "Wrong-Legacy-Pw-77" not in repr(ctx)


def test_gpg_wrong_passphrase(ws, plaintexts, h, gnupg_home: Path) -> None:
    src, data = plaintexts.make(5000)
    rel = make_input("gpg", src, ws, h, gnupg_home)
    before = h.snapshot(ws.source(rel))
    result = process_file(h.task_for(rel, data), ws.ctx(gnupg_home=gnupg_home, gpg_passphrase="Bad-Gpg-Pw-1"))
    _assert_failed(result, ws, rel, before, "config", "passphrase")
    assert "Bad-Gpg-Pw-1" not in result.error


@pytest.mark.parametrize("chunked", [False, True])
def test_res_stream_cut_short(chunked: bool, ws, plaintexts, h, res_server_cls) -> None:
    src, data = plaintexts.make(500_000)
    rel = make_input("res-aes128", src, ws, h, None)
    before = h.snapshot(ws.source(rel))
    with res_server_cls(root=ws.processing, chunked=chunked, cut_after=200_000) as srv:
        ctx = ws.ctx(decrypt_via="res", res_url=srv.url, res_source_key="Res-Key-Secret-9")
        result = process_file(h.task_for(rel, data), ctx)
    _assert_failed(result, ws, rel, before, "truncated", "re-encryption service")
    assert "Res-Key-Secret-9" not in result.error and "Res-Key-Secret-9" not in repr(ctx)


def test_garbage_c4gh_is_format_error(ws, h) -> None:
    rel = "x.bam.c4gh"
    ws.source(rel).write_bytes(os.urandom(100_000))
    before = h.snapshot(ws.source(rel))
    result = process_file(h.task_for(rel, md5="0" * 32), ws.ctx())
    _assert_failed(result, ws, rel, before, "format", "not a Crypt4GH file")


def test_unconfigured_encrypted_extension_is_format_error(ws, plaintexts, h, gnupg_home: Path) -> None:
    src, data = plaintexts.make(1000)
    rel = make_input("gpg", src, ws, h, gnupg_home)
    before = h.snapshot(ws.source(rel))
    result = process_file(h.task_for(rel, data), ws.ctx(extensions=(".c4gh", ".cip"), gnupg_home=gnupg_home))
    _assert_failed(result, ws, rel, before, "format", ".gpg")


@pytest.mark.parametrize("rel", ["empty.bam.c4gh", "empty.bam.cip"])
def test_zero_byte_encrypted_input_fails(rel: str, ws, h) -> None:
    ws.source(rel).write_bytes(b"")
    before = h.snapshot(ws.source(rel))
    result = process_file(h.task_for(rel, b""), ws.ctx())
    _assert_failed(result, ws, rel, before, "truncated")


def test_unsafe_paths(ws, plaintexts, h, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    src, data = plaintexts.make(100)
    h.c4gh_encrypt(src, ws.keys.inbox.pub, outside / "x.c4gh")
    (ws.processing / "link.c4gh").symlink_to(outside / "x.c4gh")
    (ws.processing / "linkdir").symlink_to(outside)
    for rel, needle in [
        ("../outside/x.c4gh", ".."),
        (str(outside / "x.c4gh"), "absolute"),
        ("link.c4gh", "symbolic link"),
        ("linkdir/x.c4gh", "outside the processing"),
    ]:
        result = process_file(h.task_for(rel, data), ws.ctx())
        assert result.status == "failed" and result.error_kind == "unsafe_path", (rel, result.error)
        assert needle in result.error
        assert_nothing_archived(ws)
    assert (outside / "x.c4gh").exists()


def test_existing_archived_copy_is_never_overwritten(ws, plaintexts, h) -> None:
    src, data = plaintexts.make(5000)
    rel = make_input("c4gh-full", src, ws, h, None, rel_stem="x.bam")
    final = ws.end_storage / "x.bam.c4gh"
    final.write_bytes(b"existing archived copy")
    before = h.snapshot(ws.source(rel))
    result = process_file(h.task_for(rel, data), ws.ctx())
    assert result.status == "failed" and result.error_kind == "archive_conflict"
    assert "already exists" in result.error and str(final) in result.error and str(ws.source(rel)) in result.error
    assert final.read_bytes() == b"existing archived copy"
    assert ws.end_files() == [final]
    assert h.snapshot(ws.source(rel)) == before


def test_conflict_appearing_during_processing(ws, plaintexts, h, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer wins the race between our early check and the link: we still never overwrite."""
    from legampi import archive

    src, data = plaintexts.make(5000)
    rel = make_input("c4gh-full", src, ws, h, None, rel_stem="x.bam")
    final = ws.end_storage / "x.bam.c4gh"
    real_finish = archive.TempArchiveFile.finish

    def finish_then_race(self):
        out = real_finish(self)
        final.write_bytes(b"the other writer")
        return out

    monkeypatch.setattr(archive.TempArchiveFile, "finish", finish_then_race)
    result = process_file(h.task_for(rel, data), ws.ctx())
    assert result.error_kind == "archive_conflict"
    assert final.read_bytes() == b"the other writer" and ws.end_files() == [final]
    assert not (ws.end_storage / "x.bam.c4gh.sha256").exists()  # our sidecar was taken back


def test_foreign_sidecar_is_never_overwritten(ws, plaintexts, h) -> None:
    """A checksum file at the sidecar path that legampi did not write blocks the archive, untouched."""
    src, data = plaintexts.make(5000)
    rel = make_input("c4gh-full", src, ws, h, None, rel_stem="x.bam")
    side = ws.end_storage / "x.bam.c4gh.sha256"
    side.write_text("0" * 64 + "  x.bam.c4gh\n")
    before = h.snapshot(ws.source(rel))
    result = process_file(h.task_for(rel, data), ws.ctx())
    assert result.status == "failed" and result.error_kind == "archive_conflict", result.error
    assert str(side) in result.error and "no legampi provenance" in result.error
    assert side.read_text() == "0" * 64 + "  x.bam.c4gh\n"
    assert ws.end_files() == [side] and h.snapshot(ws.source(rel)) == before


def test_stale_sidecar_of_an_earlier_attempt_is_replaced(ws, plaintexts, h) -> None:
    """A crash after the sidecar but before the link leaves our own sidecar: the retry replaces it."""
    from legampi import checksum

    src, data = plaintexts.make(5000)
    rel = make_input("c4gh-full", src, ws, h, None, rel_stem="x.bam")
    task = h.task_for(rel, data)
    final = ws.end_storage / "x.bam.c4gh"
    prov = {"file_id": task.file_id, "file_name": rel, "md5": "0" * 32}
    checksum.write_sidecar(final, "1" * 64, "sha256", provenance=prov)
    other = h.task_for(rel, data)
    result = process_file(task, ws.ctx())
    assert result.status == "available", result.error
    expected, name, got = checksum.read_sidecar(final.with_name("x.bam.c4gh.sha256"))
    assert expected == result.archive_checksum and name == "x.bam.c4gh" and got is not None
    assert got["file_id"] == other.file_id and got["md5"] == hashlib.md5(data).hexdigest()
    sha256sum_check(final.with_name("x.bam.c4gh.sha256"))


def test_no_space_left(ws, plaintexts, h, tmp_path: Path) -> None:
    small = tmp_path / "small_end"
    small.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs for the ENOSPC test: {p.stderr.strip()}")
    try:
        src, data = plaintexts.make(3 * 1024 * 1024)
        rel = make_input("c4gh-full", src, ws, h, None)
        before = h.snapshot(ws.source(rel))
        result = process_file(h.task_for(rel, data), ws.ctx(end_storage=small))
        assert result.status == "failed" and result.error_kind == "nospace", result.error
        assert "no space left on device" in result.error and rel in result.error
        assert [q for q in small.rglob("*") if not q.is_dir()] == []
        assert h.snapshot(ws.source(rel)) == before
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_quarantine_moves_bad_source_only(ws, plaintexts, h) -> None:
    src, data = plaintexts.make(5000)
    rel = make_input("c4gh-full", src, ws, h, None, rel_stem="q/x.bam")
    content = ws.source(rel).read_bytes()
    ctx = ws.ctx(quarantine=ws.quarantine)
    result = process_file(h.task_for(rel, data, md5="1" * 32), ctx)
    assert result.error_kind == "checksum"
    assert result.quarantined_to == str(ws.quarantine / rel) and "quarantine" in result.error
    assert not ws.source(rel).exists() and (ws.quarantine / rel).read_bytes() == content
    assert_nothing_archived(ws)
    # an environment problem (archive_conflict) leaves the source where it is
    src2, data2 = plaintexts.make(10)
    rel2 = make_input("plain", src2, ws, h, None, rel_stem="q/y.bam")
    (ws.end_storage / "q").mkdir(exist_ok=True)
    (ws.end_storage / "q" / "y.bam.c4gh").write_bytes(b"x")
    result = process_file(h.task_for(rel2, data2), ctx)
    assert result.error_kind == "archive_conflict" and result.quarantined_to is None and ws.source(rel2).exists()


def test_secrets_not_in_repr(ws, keys) -> None:
    ctx = ws.ctx(legacy_password="Pw-Legacy-123", gpg_passphrase="Pw-Gpg-456", res_source_key="Pw-Res-789")
    text = repr(ctx)
    for secret in ("Pw-Legacy-123", "Pw-Gpg-456", "Pw-Res-789", keys.inbox.secret.hex(), repr(keys.inbox.secret)[2:-1]):
        assert secret not in text
    assert str(ws.processing) in text  # the rest is still there for debugging


def test_context_from_config(ws, keys, h, tmp_path: Path) -> None:
    class Secret:
        def __init__(self, v: str) -> None:
            self._v = v

        def reveal(self) -> str:
            return self._v

    ns = lambda **kw: type("NS", (), kw)  # noqa: E731 - tiny attribute bag
    cfg = ns(
        workspaces=ns(processing=ws.processing, end_storage=ws.end_storage, quarantine=None),
        func=ns(extensions=("c4gh", ".CIP"), res_url=None, chunk_size=1 << 20, threads_per_file="2"),
        crypto=ns(
            inbox_secret_key=keys.locked.sec,
            inbox_passphrase=Secret(h.LOCKED_KEY_PASSPHRASE),
            archive_public_key=keys.archive.pub,
            reencrypt="header",
            archive_checksum="md5",
            legacy_password=Secret("lp"),
            legacy_cipher="aes256",
            gnupg_home=None,
            gpg_passphrase=None,
            decrypt_via="local",
            res_source_format="aes128",
            res_source_key=None,
            file_mode=0o600,
        ),
    )
    ctx = PipelineContext.from_config(cfg)
    assert ctx.extensions == (".c4gh", ".cip") and ctx.threads_per_file == "2"
    assert ctx.inbox_secret_key == load_locked(keys, h) and ctx.archive_public_key == keys.archive.public
    assert (ctx.reencrypt, ctx.archive_checksum, ctx.legacy_cipher, ctx.file_mode, ctx.chunk_size) == (
        "header",
        "md5",
        "aes256",
        0o600,
        1 << 20,
    )
    assert ctx.legacy_password == "lp" and ctx.gpg_passphrase is None
    with pytest.raises(ValueError):
        dataclasses.replace(ctx, reencrypt="sometimes")


def test_context_from_real_config_classes(ws, keys, h) -> None:
    """The attribute contract against legampi.config's own dataclasses, when that module is present."""
    config = pytest.importorskip("legampi.config")
    from types import SimpleNamespace

    cfg = SimpleNamespace(
        workspaces=config.Workspaces(
            receiving=ws.root, processing=ws.processing, end_storage=ws.end_storage, quarantine=ws.quarantine
        ),
        func=config.FuncConfig(),
        crypto=config.CryptoConfig(
            archive_public_key=keys.archive.pub,
            inbox_secret_key=keys.locked.sec,
            inbox_passphrase=config.Secret(h.LOCKED_KEY_PASSPHRASE, "test"),
            legacy_password=config.Secret("Lp-Secret-55", "test"),
        ),
    )
    ctx = PipelineContext.from_config(cfg)
    assert ctx.inbox_secret_key == load_locked(keys, h) and ctx.legacy_password == "Lp-Secret-55"
    assert ctx.quarantine == ws.quarantine and ctx.extensions == (".c4gh", ".cip", ".gpg")
    assert "Lp-Secret-55" not in repr(ctx)


def load_locked(keys, h) -> bytes:
    from legampi.keys import load_secret_key

    return load_secret_key(keys.locked.sec, h.LOCKED_KEY_PASSPHRASE)


# ------------------------------------------------------------------ plaintext never touches disk
WINDOW = 64


def _plaintext_windows(data: bytes) -> set[bytes]:
    half = WINDOW // 2
    return {data[i : i + half] for i in range(len(data) - half + 1)}


def _leaks(path: Path, windows: set[bytes]) -> bool:
    """Does `path` hold any 64-byte window of the plaintext?

    Any 64-byte run of the plaintext inside a file covers a whole 32-byte block aligned to a multiple
    of 32 in that file, and that block is one of the plaintext's 32-byte windows.
    """
    content = path.read_bytes()
    half = WINDOW // 2
    return any(content[i : i + half] in windows for i in range(0, len(content) - half + 1, half))


def test_plaintext_never_written_to_disk(
    ws, keys, plaintexts, h, gnupg_home: Path, res_server_cls, tmp_path: Path
) -> None:
    src, data = plaintexts.make(256 * 1024 + 77, seed=424242)
    assert not src.is_relative_to(tmp_path)
    windows = _plaintext_windows(data)
    results = []
    for kind in ("c4gh-full", "c4gh-header", "cip-aes128", "cip-aes256", "gpg"):
        rel = make_input(kind, src, ws, h, gnupg_home, rel_stem=f"{kind}/s.bam")
        results.append(process_file(h.task_for(rel, data), ctx_for(kind, ws, gnupg_home)))
        bad = make_input(kind, src, ws, h, gnupg_home, rel_stem=f"{kind}/bad.bam")
        results.append(process_file(h.task_for(bad, data, md5="2" * 32), ctx_for(kind, ws, gnupg_home)))
    rel = make_input("res-aes128", src, ws, h, None, rel_stem="res/s.bam")
    with res_server_cls(root=ws.processing) as srv:
        results.append(
            process_file(
                h.task_for(rel, data), ws.ctx(decrypt_via="res", res_url=srv.url, res_source_key=h.LEGACY_PASSWORD)
            )
        )
    assert [r.status for r in results] == ["available", "failed"] * 5 + ["available"]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 15
    assert not any(is_temp_name(p.name) for p in files)
    # the detector itself works: a file holding a plaintext window is caught
    probe = tmp_path / "probe"
    probe.write_bytes(os.urandom(100) + data[5000:5064] + os.urandom(100))
    assert _leaks(probe, windows)
    probe.unlink()
    leaking = [p for p in files if _leaks(p, windows)]
    assert leaking == []


# ------------------------------------------------------------------ streaming and finishing apart
def test_nothing_is_archived_before_the_finishing_part(ws, keys, plaintexts, h) -> None:
    """start_file streams into a temp file only; the final name, the sidecar and the result come from
    finish() (run in another thread by process_file_overlapped, after the fsync)."""
    src, data = plaintexts.make(200_000)
    rel = make_input("c4gh-full", src, ws, h, None, rel_stem="o/x.bam")
    finish = start_file(h.task_for(rel, data), ws.ctx())
    streamed = ws.end_files()
    assert len(streamed) == 1 and is_temp_name(streamed[0].name), streamed
    result = finish()
    final = ws.end_storage / "o" / "x.bam.c4gh"
    assert result.status == "available", result.error
    assert ws.end_files() == [final, final.with_name("x.bam.c4gh.sha256")]
    assert h.c4gh_decrypt(final, keys.archive.sec) == data


def test_overlapped_checksum_failure_is_recorded_and_leaves_nothing(ws, plaintexts, h) -> None:
    """The manifest comparison happens in the finishing thread; its failure is the file's result."""
    src, data = plaintexts.make(70_000)
    rel = make_input("c4gh-full", src, ws, h, None)
    before = h.snapshot(ws.source(rel))
    result = process_file_overlapped(h.task_for(rel, data, md5="0" * 32), ws.ctx()).result(timeout=60)
    _assert_failed(result, ws, rel, before, "checksum", "md5 mismatch", "0" * 32)


def test_overlapped_streaming_failure_is_recorded(ws, keys, plaintexts, h) -> None:
    src, data = plaintexts.make(70_000)
    rel = make_input("c4gh-full", src, ws, h, None)
    path = ws.source(rel)
    path.write_bytes(path.read_bytes()[:-100])  # truncated: fails while streaming, before any fsync
    result = process_file_overlapped(h.task_for(rel, data), ws.ctx()).result(timeout=60)
    assert result.status == "failed" and result.error_kind == "truncated", result.error
    assert_nothing_archived(ws)


def test_a_started_file_never_finished_leaves_no_temp_file(ws, plaintexts, h) -> None:
    """A worker that dies between the two parts leaves a temp file for recovery at worst; a dropped
    finisher (garbage-collected) removes it at once."""
    import gc

    src, data = plaintexts.make(70_000)
    rel = make_input("c4gh-full", src, ws, h, None)
    finish = start_file(h.task_for(rel, data), ws.ctx())
    assert len(ws.end_files()) == 1
    del finish
    gc.collect()
    assert_nothing_archived(ws)
