"""Each input format alone, on files made by independent tools (crypt4gh CLI, openssl, gpg)."""

from __future__ import annotations

import hashlib
import io
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from legampi.formats import IngestError, detect_format, legacy_aes, open_plaintext, openpgp, plain, res
from legampi.formats import crypt4gh as c4gh

SIZES = [0, 1, 65535, 65536, 65537, 300_000]


class ShortReads(io.RawIOBase):
    """A stream that returns at most `step` bytes per read, like a pipe or a socket."""

    def __init__(self, data: bytes, step: int = 1000) -> None:
        self.buf = io.BytesIO(data)
        self.step = step

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:
        chunk = self.buf.read(min(len(b), self.step))
        b[: len(chunk)] = chunk
        return len(chunk)


def joined(chunks) -> bytes:
    return b"".join(bytes(c) for c in chunks)


# ------------------------------------------------------------------ detect_format
@pytest.mark.parametrize(
    ("rel", "fmt"),
    [
        ("a/x.bam.c4gh", "crypt4gh"),
        ("x.bam.C4GH", "crypt4gh"),
        ("x.bam.cip", "legacy_aes"),
        ("d/x.vcf.gz.gpg", "openpgp"),
        ("x.bam", "plain"),
        ("README", "plain"),
        (".hidden", "plain"),
    ],
)
def test_detect_format_by_configured_extension(rel: str, fmt: str) -> None:
    assert detect_format(rel, (".c4gh", ".cip", ".gpg")) == fmt


def test_detect_format_refuses_encrypted_looking_unconfigured_extension() -> None:
    with pytest.raises(IngestError) as e:
        detect_format("a/x.bam.gpg", (".c4gh", ".cip"))
    assert e.value.kind == "format" and ".gpg" in str(e.value) and "a/x.bam.gpg" in str(e.value)
    with pytest.raises(IngestError) as e:
        detect_format("x.bam.enc", (".c4gh",))
    assert e.value.kind == "format"


def test_detect_format_configured_extension_without_decryptor() -> None:
    with pytest.raises(IngestError) as e:
        detect_format("x.bam.enc", (".c4gh", ".enc"))
    assert e.value.kind == "format" and "no decryptor" in str(e.value)


# ------------------------------------------------------------------ Crypt4GH
@pytest.mark.parametrize("size", SIZES)
def test_c4gh_decrypts_cli_output(size: int, keys, plaintexts, tmp_path: Path, h) -> None:
    src, data = plaintexts.make(size)
    enc = h.c4gh_encrypt(src, keys.inbox.pub, tmp_path / "x.c4gh")
    with open(enc, "rb") as f:
        assert joined(c4gh.decrypt_stream(f, keys.inbox.secret, chunk_size=65536 * 3)) == data


def test_c4gh_decrypt_survives_short_reads(keys, plaintexts, tmp_path: Path, h) -> None:
    src, data = plaintexts.make(200_001)
    enc = h.c4gh_encrypt(src, keys.inbox.pub, tmp_path / "x.c4gh").read_bytes()
    assert joined(c4gh.decrypt_stream(ShortReads(enc, 977), keys.inbox.secret)) == data


@pytest.mark.parametrize("piece", [1, 7, 4096, 65535, 65536, 65537, 200_000])
def test_c4gh_encryptor_regroups_any_chunking(piece: int, keys, tmp_path: Path, h) -> None:
    """Odd-sized input chunks (gpg pipes, HTTP) must still give full 64 KiB segments."""
    data = hashlib.sha256(b"seed").digest() * (300_003 // 32 + 1)
    data = data[:300_003] if piece > 1 else data[:70_000]
    pieces = [data[i : i + piece] for i in range(0, len(data), piece)]
    out = tmp_path / "enc.c4gh"
    out.write_bytes(joined(c4gh.encrypt_stream(pieces, keys.archive.public, batch_segments=2)))
    hdr_size = len(c4gh.build_header([b"\0" * 40], keys.archive.public))
    nseg = -(-len(data) // c4gh.SEGMENT_SIZE)
    assert out.stat().st_size == hdr_size + len(data) + nseg * c4gh.CIPHER_DIFF
    assert h.c4gh_decrypt(out, keys.archive.sec) == data


def test_c4gh_encryptor_empty_plaintext_is_header_only(keys, tmp_path: Path, h) -> None:
    out = tmp_path / "empty.c4gh"
    out.write_bytes(joined(c4gh.encrypt_stream([], keys.archive.public)))
    assert h.c4gh_decrypt(out, keys.archive.sec) == b""
    with open(out, "rb") as f:
        hdr = c4gh.read_header(f, keys.archive.secret)
        assert f.read() == b"" and hdr.size == out.stat().st_size


def test_c4gh_encryptor_uses_fresh_writer_and_session_keys(keys) -> None:
    a = joined(c4gh.encrypt_stream([b"x" * 10], keys.archive.public))
    b = joined(c4gh.encrypt_stream([b"x" * 10], keys.archive.public))
    assert a[20:52] != b[20:52]  # writer public key differs per file
    assert a != b


def test_c4gh_build_header_checks_its_own_seal(keys, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one header seal (process, rekey, export) opens its packets again before it returns the header."""
    packets = [(0).to_bytes(4, "little") + (0).to_bytes(4, "little") + bytes(range(32))]
    raw = c4gh.build_header(packets, keys.archive.public)
    assert c4gh.read_header(io.BytesIO(raw), keys.archive.secret).packets == packets
    real = c4gh.sodium.chacha20poly1305_encrypt

    def flip(out, data, key):  # a seal whose bytes no longer open with the writer's key exchange
        n = real(out, data, key)
        out[0] ^= 1
        return n

    monkeypatch.setattr(c4gh.sodium, "chacha20poly1305_encrypt", flip)
    with pytest.raises(IngestError, match="does not open again"):
        c4gh.build_header(packets, keys.archive.public)


def test_c4gh_header_reencryption_keeps_payload(keys, plaintexts, tmp_path: Path, h) -> None:
    src, data = plaintexts.make(200_000)
    enc = h.c4gh_encrypt(src, keys.inbox.pub, tmp_path / "x.c4gh")
    seen = bytearray()
    with open(enc, "rb") as f:
        out = joined(
            c4gh.reencrypt_header_stream(
                f, keys.inbox.secret, keys.archive.public, lambda v: seen.extend(v), chunk_size=65536 * 2
            )
        )
    assert bytes(seen) == data
    with open(enc, "rb") as f:
        old_hdr = c4gh.read_header(f, keys.inbox.secret)
        old_payload = f.read()
    new = tmp_path / "new.c4gh"
    new.write_bytes(out)
    with open(new, "rb") as f:
        new_hdr = c4gh.read_header(f, keys.archive.secret)
        assert f.read() == old_payload
    assert new_hdr.session_keys == old_hdr.session_keys
    assert h.c4gh_decrypt(new, keys.archive.sec) == data
    with open(new, "rb") as f, pytest.raises(IngestError) as e:
        c4gh.read_header(f, keys.inbox.secret)  # the inbox key no longer opens the archived copy
    assert e.value.kind == "key"


def _c4gh_bytes(keys, plaintexts, tmp_path, h, size=200_000):
    src, data = plaintexts.make(size)
    enc = h.c4gh_encrypt(src, keys.inbox.pub, tmp_path / "x.c4gh").read_bytes()
    with open(tmp_path / "x.c4gh", "rb") as f:
        hsize = c4gh.read_header(f, keys.inbox.secret).size
    return enc, hsize, data


def _fail(data: bytes, key: bytes) -> IngestError:
    with pytest.raises(IngestError) as e:
        joined(c4gh.decrypt_stream(io.BytesIO(data), key, label="t/x.c4gh"))
    assert "t/x.c4gh" in str(e.value)
    return e.value


def test_c4gh_wrong_key(keys, plaintexts, tmp_path: Path, h) -> None:
    enc, _, _ = _c4gh_bytes(keys, plaintexts, tmp_path, h)
    err = _fail(enc, keys.other.secret)
    assert err.kind == "key" and "inbox secret key" in str(err)


def test_c4gh_flipped_payload_bit_is_corrupt(keys, plaintexts, tmp_path: Path, h) -> None:
    enc, hsize, _ = _c4gh_bytes(keys, plaintexts, tmp_path, h)
    bad = bytearray(enc)
    bad[hsize + 100] ^= 0x01
    err = _fail(bytes(bad), keys.inbox.secret)
    assert err.kind == "corrupt" and "segment #0" in str(err)


def test_c4gh_truncated_inside_segment(keys, plaintexts, tmp_path: Path, h) -> None:
    enc, hsize, _ = _c4gh_bytes(keys, plaintexts, tmp_path, h)
    err = _fail(enc[: hsize + c4gh.CIPHER_SEGMENT_SIZE + 5000], keys.inbox.secret)
    assert err.kind == "truncated"


def test_c4gh_last_segment_shorter_than_mac(keys, plaintexts, tmp_path: Path, h) -> None:
    enc, hsize, _ = _c4gh_bytes(keys, plaintexts, tmp_path, h)
    err = _fail(enc[: hsize + c4gh.CIPHER_SEGMENT_SIZE + 20], keys.inbox.secret)
    assert err.kind == "truncated" and "nonce + MAC" in str(err)


@pytest.mark.parametrize("cut", [1, 8, 15, 17, 30])
def test_c4gh_cut_header_is_truncated(cut: int, keys, plaintexts, tmp_path: Path, h) -> None:
    enc, hsize, _ = _c4gh_bytes(keys, plaintexts, tmp_path, h)
    assert cut < hsize
    assert _fail(enc[:cut], keys.inbox.secret).kind == "truncated"


def test_c4gh_empty_and_garbage(keys) -> None:
    assert _fail(b"", keys.inbox.secret).kind == "truncated"
    assert _fail(b"this is not crypt4gh at all" * 10, keys.inbox.secret).kind == "format"
    bad_version = b"crypt4gh" + (2).to_bytes(4, "little") + (1).to_bytes(4, "little") + b"\0" * 100
    assert _fail(bad_version, keys.inbox.secret).kind == "format"


def test_c4gh_edit_list_refused(keys, plaintexts, tmp_path: Path, h) -> None:
    src, _ = plaintexts.make(100_000)
    enc = h.c4gh_encrypt(src, keys.inbox.pub, tmp_path / "x.c4gh")
    with open(enc, "rb") as fin:
        p = subprocess.run(
            [h.C4GH, "rearrange", "--sk", str(keys.inbox.sec), "--range", "10-5000"],
            stdin=fin,
            capture_output=True,
            check=True,
        )
    err = _fail(p.stdout, keys.inbox.secret)
    assert err.kind == "format" and "edit list" in str(err)


# ------------------------------------------------------------------ legacy AES (.cip)
@pytest.mark.parametrize("cipher", ["aes128", "aes256"])
@pytest.mark.parametrize("size", [0, 1, 65537, 300_000])
def test_cip_decrypts_openssl_output(cipher: str, size: int, plaintexts, tmp_path: Path, h) -> None:
    src, data = plaintexts.make(size)
    enc = h.openssl_cip(src, h.LEGACY_PASSWORD, cipher, tmp_path / "x.cip")
    with open(enc, "rb") as f:
        got = joined(legacy_aes.decrypt_stream(f, h.LEGACY_PASSWORD, cipher, chunk_size=65536))
    assert got == data


def test_cip_counter_is_full_128_bit(plaintexts, tmp_path: Path, h) -> None:
    """An IV near 2**64 boundaries must carry into the upper half, as OpenSSL's CTR does."""
    src, data = plaintexts.make(70_000)
    iv = bytes.fromhex("00000000000000ffffffffffffffff00")
    enc = h.openssl_cip(src, h.LEGACY_PASSWORD, "aes128", tmp_path / "x.cip", iv=iv)
    with open(enc, "rb") as f:
        assert joined(legacy_aes.decrypt_stream(f, h.LEGACY_PASSWORD, "aes128")) == data


def test_cip_key_derivation_matches_openssl(h) -> None:
    for cipher, n in (("aes128", 16), ("aes256", 32)):
        p = h.run(
            [
                h.OPENSSL,
                "kdf",
                "-keylen",
                str(n),
                "-kdfopt",
                "digest:SHA1",
                "-kdfopt",
                "pass:abc",
                "-kdfopt",
                "hexsalt:f42201009edf4e15",
                "-kdfopt",
                "iter:1024",
                "PBKDF2",
            ]
        )
        expected = p.stdout.decode().strip().replace(":", "").lower()
        assert legacy_aes.derive_key("abc", cipher).hex() == expected


def test_cip_shorter_than_iv_is_truncated() -> None:
    for data in (b"", b"0123456789"):
        with pytest.raises(IngestError) as e:
            joined(legacy_aes.decrypt_stream(io.BytesIO(data), "pw", label="x.cip"))
        assert e.value.kind == "truncated" and "x.cip" in str(e.value)


def test_cip_wrong_password_gives_other_bytes_silently(plaintexts, tmp_path: Path, h) -> None:
    src, data = plaintexts.make(1000)
    enc = h.openssl_cip(src, h.LEGACY_PASSWORD, "aes128", tmp_path / "x.cip")
    with open(enc, "rb") as f:
        assert joined(legacy_aes.decrypt_stream(f, "not-the-password")) != data


def test_cip_encrypt_stream_roundtrip() -> None:
    data = bytes(range(256)) * 1000
    enc = joined(legacy_aes.encrypt_stream([data[:1000], data[1000:]], "pw", "aes256"))
    assert joined(legacy_aes.decrypt_stream(io.BytesIO(enc), "pw", "aes256")) == data


# ------------------------------------------------------------------ OpenPGP
@pytest.mark.parametrize("size", [0, 1, 65537, 300_000])
def test_gpg_decrypts_gpg_output(size: int, gnupg_home: Path, plaintexts, tmp_path: Path, h) -> None:
    src, data = plaintexts.make(size)
    enc = h.gpg_encrypt(src, gnupg_home, tmp_path / "x.gpg")
    assert joined(openpgp.decrypt_stream(enc, gnupg_home, h.GPG_PASSPHRASE, chunk_size=65536)) == data


def test_gpg_wrong_passphrase(gnupg_home: Path, plaintexts, tmp_path: Path, h) -> None:
    src, _ = plaintexts.make(1000)
    enc = h.gpg_encrypt(src, gnupg_home, tmp_path / "x.gpg")
    with pytest.raises(IngestError) as e:
        joined(openpgp.decrypt_stream(enc, gnupg_home, "Wrong-Pass-1", label="x.gpg"))
    # the operator's passphrase, not the file: `config` (the job stops, the file is not quarantined)
    assert e.value.kind == "config" and "passphrase" in str(e.value) and "Wrong-Pass-1" not in str(e.value)


def test_gpg_truncated(gnupg_home: Path, plaintexts, tmp_path: Path, h) -> None:
    src, _ = plaintexts.make(300_000)
    enc = h.gpg_encrypt(src, gnupg_home, tmp_path / "x.gpg")
    cut = tmp_path / "cut.gpg"
    cut.write_bytes(enc.read_bytes()[:150_000])
    with pytest.raises(IngestError) as e:
        joined(openpgp.decrypt_stream(cut, gnupg_home, h.GPG_PASSPHRASE, label="cut.gpg"))
    assert e.value.kind in ("truncated", "corrupt")


def test_gpg_not_openpgp_data(gnupg_home: Path, tmp_path: Path, h) -> None:
    bad = tmp_path / "bad.gpg"
    bad.write_bytes(b"plain text pretending to be gpg\n" * 100)
    with pytest.raises(IngestError) as e:
        joined(openpgp.decrypt_stream(bad, gnupg_home, h.GPG_PASSPHRASE, label="bad.gpg"))
    assert e.value.kind in ("format", "corrupt") and "bad.gpg" in str(e.value)


def test_gpg_child_reaped_when_consumer_stops(
    gnupg_home: Path, plaintexts, tmp_path: Path, h, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _ = plaintexts.make(2_000_000)
    enc = h.gpg_encrypt(src, gnupg_home, tmp_path / "x.gpg")
    procs = []
    real = subprocess.Popen

    def spy(*a, **kw):
        p = real(*a, **kw)
        procs.append(p)
        return p

    monkeypatch.setattr(openpgp.subprocess, "Popen", spy)
    gen = openpgp.decrypt_stream(enc, gnupg_home, h.GPG_PASSPHRASE, chunk_size=65536)
    next(gen)
    gen.close()
    assert len(procs) == 1 and procs[0].returncode is not None


def test_gpg_passphrase_not_on_command_line(
    gnupg_home: Path, plaintexts, tmp_path: Path, h, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, data = plaintexts.make(1000)
    enc = h.gpg_encrypt(src, gnupg_home, tmp_path / "x.gpg")
    seen = []
    real = subprocess.Popen

    def spy(args, **kw):
        seen.append((list(args), dict(kw.get("env") or {})))
        return real(args, **kw)

    monkeypatch.setattr(openpgp.subprocess, "Popen", spy)
    assert joined(openpgp.decrypt_stream(enc, gnupg_home, h.GPG_PASSPHRASE)) == data
    args, env = seen[0]
    assert not any(h.GPG_PASSPHRASE in a for a in args)
    assert not any(h.GPG_PASSPHRASE in v for v in env.values())


def test_gpg_status_classification() -> None:
    st = openpgp.parse_status(b"[GNUPG:] PLAINTEXT_LENGTH 500\n[GNUPG:] BADMDC\n[GNUPG:] DECRYPTION_FAILED\n")
    assert openpgp.classify_failure(st, 2, 100, "f").kind == "truncated"
    assert openpgp.classify_failure(st, 2, 500, "f").kind == "corrupt"
    st = openpgp.parse_status(b"[GNUPG:] NO_SECKEY 0123456789ABCDEF\n[GNUPG:] DECRYPTION_FAILED\n")
    assert openpgp.classify_failure(st, 2, 0, "f").kind == "key"


# ------------------------------------------------------------------ plain
def test_plain_reads_everything_and_refuses_c4gh_magic() -> None:
    data = bytes(range(256)) * 1000
    assert joined(plain.read_stream(io.BytesIO(data), chunk_size=65536)) == data
    assert joined(plain.read_stream(io.BytesIO(b""))) == b""
    with pytest.raises(IngestError) as e:
        joined(plain.read_stream(io.BytesIO(b"crypt4gh" + data), label="x.bam"))
    assert e.value.kind == "format" and ".c4gh" in str(e.value)


# ------------------------------------------------------------------ re-encryption service
def _cip(plaintexts, tmp_path, h, size=300_000):
    src, data = plaintexts.make(size)
    return h.openssl_cip(src, h.LEGACY_PASSWORD, "aes128", tmp_path / "x.bam.cip"), data


@pytest.mark.parametrize("chunked", [False, True])
def test_res_streams_plaintext(chunked: bool, res_server_cls, plaintexts, tmp_path: Path, h) -> None:
    enc, data = _cip(plaintexts, tmp_path, h)
    with res_server_cls(root=tmp_path, chunked=chunked) as srv:
        got = joined(res.fetch_plaintext(srv.url, str(enc), "aes128", h.LEGACY_PASSWORD, chunk_size=65536))
        assert srv.requests[0] == {
            "filePath": str(enc),
            "sourceFormat": "aes128",
            "sourceKey": h.LEGACY_PASSWORD,
            "destinationFormat": "plain",
        }
    assert got == data


@pytest.mark.parametrize("chunked", [False, True])
def test_res_cut_stream_is_truncated(chunked: bool, res_server_cls, plaintexts, tmp_path: Path, h) -> None:
    enc, _ = _cip(plaintexts, tmp_path, h)
    with res_server_cls(root=tmp_path, chunked=chunked, cut_after=100_000) as srv, pytest.raises(IngestError) as e:
        joined(res.fetch_plaintext(srv.url, str(enc), "aes128", h.LEGACY_PASSWORD, label="x.bam.cip"))
    assert e.value.kind == "truncated" and "x.bam.cip" in str(e.value)
    assert h.LEGACY_PASSWORD not in str(e.value)


def test_res_http_error_and_unreachable(res_server_cls, tmp_path: Path, h) -> None:
    with res_server_cls(root=tmp_path) as srv:
        url = srv.url
        with pytest.raises(IngestError) as e:
            joined(res.fetch_plaintext(url, str(tmp_path / "missing.cip"), "aes128", h.LEGACY_PASSWORD))
    assert e.value.kind == "io" and "404" in str(e.value)
    assert len(srv.requests) == 1  # a 404 is final: not retried
    # the server is stopped now: nothing listens on that port (refused connections are retried)
    with pytest.raises(IngestError) as e:
        joined(res.fetch_plaintext(url, "/x.cip", "aes128", h.LEGACY_PASSWORD, timeout=(2, 2), backoff=0))
    assert e.value.kind == "io" and h.LEGACY_PASSWORD not in str(e.value)
    assert f"cannot reach the re-encryption service {url}, gave up after retrying" in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__


@pytest.mark.parametrize("status", [503, 429])
def test_res_busy_service_is_retried_after_its_retry_after(
    status: int, res_server_cls, plaintexts, tmp_path: Path, h
) -> None:
    """urllib3 retries at once when backoff is 0; the 1 s wait can only come from Retry-After."""
    enc, data = _cip(plaintexts, tmp_path, h)
    with res_server_cls(root=tmp_path, fail_first=2, fail_status=status, retry_after="1") as srv:
        got = joined(res.fetch_plaintext(srv.url, str(enc), "aes128", h.LEGACY_PASSWORD, backoff=0))
        assert srv.statuses == [status, status, 200]
        assert all(b - a >= 0.9 for a, b in zip(srv.times, srv.times[1:], strict=False))
    assert got == data


def test_res_that_stays_busy_fails_naming_the_service_not_the_key(
    res_server_cls, plaintexts, tmp_path: Path, h
) -> None:
    enc, _ = _cip(plaintexts, tmp_path, h)
    with res_server_cls(root=tmp_path, fail_first=100, fail_status=502) as srv, pytest.raises(IngestError) as e:
        url = srv.url
        joined(res.fetch_plaintext(url, str(enc), "aes128", h.LEGACY_PASSWORD, label="x.cip", retries=2, backoff=0))
    msg = str(e.value)
    assert e.value.kind == "io" and srv.statuses == [502, 502, 502]
    assert msg.startswith(f"x.cip: re-encryption service {url} answered HTTP 502") and "after 3 attempts" in msg
    assert h.LEGACY_PASSWORD not in msg and "sourceKey" not in msg


def test_open_plaintext_dispatch(keys, plaintexts, tmp_path: Path, h) -> None:
    src, data = plaintexts.make(70_000)
    enc = h.c4gh_encrypt(src, keys.inbox.pub, tmp_path / "x.c4gh")
    ctx = SimpleNamespace(inbox_secret_key=keys.inbox.secret, chunk_size=65536, decrypt_via="local")
    assert joined(open_plaintext(enc, "crypt4gh", ctx)) == data
    ctx = SimpleNamespace(inbox_secret_key=None, chunk_size=65536, decrypt_via="local")
    with pytest.raises(IngestError) as e:
        open_plaintext(enc, "crypt4gh", ctx)
    assert e.value.kind == "config" and "inbox_secret_key" in str(e.value)
