"""Fixtures for the file-pipeline unit tests: keys and inputs made by independent tools.

Inputs come from the crypt4gh CLI, gpg and openssl, never from legampi itself, so a bug shared by our
encryptor and decryptor cannot hide. Plaintext fixture files live in a session folder of their own,
outside every test's tmp_path, so the "plaintext never on disk" test can scan tmp_path whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from legampi.keys import load_public_key, load_secret_key
from legampi.stream import FileTask, PipelineContext
from tests.conftest import load_stand_in

BIN = Path(sys.executable).parent
C4GH = shutil.which("crypt4gh", path=str(BIN)) or shutil.which("crypt4gh")
C4GH_KEYGEN = shutil.which("crypt4gh-keygen", path=str(BIN)) or shutil.which("crypt4gh-keygen")
GPG = shutil.which("gpg")
OPENSSL = shutil.which("openssl")
LEGACY_PASSWORD = "Legacy-Pw-8812"
GPG_PASSPHRASE = "Gpg-Pass-4711"
LOCKED_KEY_PASSPHRASE = "C4gh-Lock-2209"
GPG_UID = "Legampi Test <legampi-test@example.org>"
EXTENSIONS = (".c4gh", ".cip", ".gpg")


def run(args: list[str], **kw: Any) -> subprocess.CompletedProcess:
    """Run a tool, failing the test with its stderr when it fails."""
    p = subprocess.run(args, capture_output=True, **kw)
    if p.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({p.returncode}): {p.stderr.decode(errors='replace')}")
    return p


@dataclasses.dataclass
class KeyPair:
    sec: Path
    pub: Path

    @property
    def secret(self) -> bytes:
        return load_secret_key(self.sec, None)

    @property
    def public(self) -> bytes:
        return load_public_key(self.pub)


@dataclasses.dataclass
class Keys:
    inbox: KeyPair
    archive: KeyPair
    other: KeyPair
    locked: KeyPair  # passphrase LOCKED_KEY_PASSPHRASE


def _keygen(folder: Path, name: str, passphrase: str | None = None) -> KeyPair:
    if C4GH_KEYGEN is None:
        pytest.skip("crypt4gh-keygen not installed")
    sec, pub = folder / f"{name}.sec", folder / f"{name}.pub"
    args = [C4GH_KEYGEN, "--sk", str(sec), "--pk", str(pub), "-f"]
    if passphrase is None:
        run(args + ["--nocrypt"])
    else:
        # keygen asks twice through getpass; a new session has no /dev/tty, so getpass reads stdin
        run(args, input=f"{passphrase}\n{passphrase}\n".encode(), start_new_session=True)
    return KeyPair(sec, pub)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("c4gh-keys")
    return Keys(
        inbox=_keygen(d, "inbox"),
        archive=_keygen(d, "archive"),
        other=_keygen(d, "other"),
        locked=_keygen(d, "locked", LOCKED_KEY_PASSPHRASE),
    )


@pytest.fixture(scope="session")
def gnupg_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Throwaway GnuPG home with one passphrase-protected key; agent caching off (wrong-pass test)."""
    if GPG is None:
        pytest.skip("gpg not installed")
    home = tmp_path_factory.mktemp("gnupg")
    home.chmod(0o700)
    (home / "gpg-agent.conf").write_text("default-cache-ttl 0\nmax-cache-ttl 0\nallow-loopback-pinentry\n")
    run(
        [
            GPG,
            "--homedir",
            str(home),
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase-fd",
            "0",
            "--quick-gen-key",
            GPG_UID,
            "future-default",
            "default",
            "never",
        ],
        input=GPG_PASSPHRASE.encode() + b"\n",
    )
    yield home
    gpgconf = shutil.which("gpgconf")
    if gpgconf:
        subprocess.run(
            [gpgconf, "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, check=False
        )  # best effort: the agent also exits when its home disappears


class Plaintexts:
    """Plaintext fixture files, kept in their own session folder (outside every tmp_path)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.n = 0

    def make(self, size: int, seed: int | None = None) -> tuple[Path, bytes]:
        self.n += 1
        rng = random.Random(seed if seed is not None else self.n * 7919 + size)
        data = rng.randbytes(size)
        path = self.folder / f"plain-{self.n}-{size}.bin"
        path.write_bytes(data)
        return path, data


@pytest.fixture(scope="session")
def plaintexts(tmp_path_factory: pytest.TempPathFactory) -> Plaintexts:
    return Plaintexts(tmp_path_factory.mktemp("plaintext-fixtures"))


def c4gh_encrypt(plain: Path, recipient_pub: Path, out: Path) -> Path:
    """Encrypt with the crypt4gh CLI (its stdin is a regular file, so no short-read truncation)."""
    if C4GH is None:
        pytest.skip("crypt4gh CLI not installed")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(plain, "rb") as fin, open(out, "wb") as fout:
        p = subprocess.run(
            [C4GH, "encrypt", "--recipient_pk", str(recipient_pub)], stdin=fin, stdout=fout, stderr=subprocess.PIPE
        )
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return out


def c4gh_decrypt(archived: Path, sec: Path) -> bytes:
    """Decrypt with the crypt4gh CLI into memory (never to disk)."""
    with open(archived, "rb") as fin:
        p = subprocess.run([C4GH, "decrypt", "--sk", str(sec)], stdin=fin, capture_output=True)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return p.stdout


def openssl_cip(plain: Path, password: str, cipher: str, out: Path, iv: bytes | None = None) -> Path:
    """Legacy .cip made by openssl: PBKDF2-HMAC-SHA1 key, then IV + AES-CTR ciphertext."""
    if OPENSSL is None:
        pytest.skip("openssl not installed")
    keylen = {"aes128": 16, "aes256": 32}[cipher]
    # note `hexsalt:`: openssl reads `salt:hex:...` as the literal string "hex:..."
    kdf = run(
        [
            OPENSSL,
            "kdf",
            "-keylen",
            str(keylen),
            "-kdfopt",
            "digest:SHA1",
            "-kdfopt",
            f"pass:{password}",
            "-kdfopt",
            "hexsalt:f42201009edf4e15",
            "-kdfopt",
            "iter:1024",
            "PBKDF2",
        ]
    )
    key = kdf.stdout.decode().strip().replace(":", "").lower()
    assert len(key) == 2 * keylen
    iv = os.urandom(16) if iv is None else iv
    enc = run([OPENSSL, "enc", f"-aes-{keylen * 8}-ctr", "-K", key, "-iv", iv.hex(), "-in", str(plain)])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(iv + enc.stdout)
    return out


def gpg_encrypt(plain: Path, home: Path, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    run(
        [
            GPG,
            "--homedir",
            str(home),
            "--batch",
            "--yes",
            "--trust-model",
            "always",
            "-e",
            "-r",
            GPG_UID,
            "-o",
            str(out),
            str(plain),
        ]
    )
    return out


class Workspace:
    """processing/, end_storage/ and quarantine/ under one test's tmp_path, plus a context maker."""

    def __init__(self, root: Path, keys: Keys) -> None:
        self.root = root
        self.keys = keys
        self.processing = root / "processing"
        self.end_storage = root / "end_storage"
        self.quarantine = root / "quarantine"
        for d in (self.processing, self.end_storage, self.quarantine):
            d.mkdir()

    def ctx(self, **overrides: Any) -> PipelineContext:
        base: dict[str, Any] = dict(
            processing=self.processing,
            end_storage=self.end_storage,
            quarantine=None,
            extensions=EXTENSIONS,
            inbox_secret_key=self.keys.inbox.secret,
            archive_public_key=self.keys.archive.public,
            reencrypt="full",
            archive_checksum="sha256",
            legacy_password=LEGACY_PASSWORD,
            legacy_cipher="aes128",
            gnupg_home=None,
            gpg_passphrase=GPG_PASSPHRASE,
            decrypt_via="local",
            res_url=None,
            res_source_format="aes128",
            res_source_key=None,
            chunk_size=256 * 1024,
        )
        base.update(overrides)
        return PipelineContext(**base)

    def source(self, rel: str) -> Path:
        return self.processing / rel

    def end_files(self) -> list[Path]:
        """Every non-directory entry in end_storage (temp files included)."""
        return sorted(p for p in self.end_storage.rglob("*") if not p.is_dir())


@pytest.fixture
def ws(tmp_path: Path, keys: Keys) -> Workspace:
    return Workspace(tmp_path, keys)


def task_for(
    rel: str, plain: bytes | None = None, md5: str | None = None, sha256: str | None = None, with_sha: bool = True
) -> FileTask:
    if plain is not None:
        md5 = md5 or hashlib.md5(plain).hexdigest()
        if with_sha:
            sha256 = sha256 or hashlib.sha256(plain).hexdigest()
    return FileTask(
        file_id="EGAF" + hashlib.sha1(rel.encode()).hexdigest()[:11],
        dataset_id="EGAD0001",
        rel=rel,
        md5=md5,
        sha256=sha256,
    )


@pytest.fixture
def res_server_cls() -> type:
    """tests/res_server.py loaded by path (works whatever pytest's import mode and cwd)."""
    mod = load_stand_in("res_server.py")
    return mod.ResServer


def snapshot(path: Path) -> tuple[bytes, int]:
    """Content and mtime of a source, to assert it was left untouched."""
    return path.read_bytes(), path.stat().st_mtime_ns


@pytest.fixture(scope="session")
def h() -> SimpleNamespace:
    """Helpers and constants for the tests (a fixture, because importing `conftest` is ambiguous)."""
    return SimpleNamespace(
        c4gh_encrypt=c4gh_encrypt,
        c4gh_decrypt=c4gh_decrypt,
        openssl_cip=openssl_cip,
        gpg_encrypt=gpg_encrypt,
        task_for=task_for,
        snapshot=snapshot,
        run=run,
        LEGACY_PASSWORD=LEGACY_PASSWORD,
        GPG_PASSPHRASE=GPG_PASSPHRASE,
        LOCKED_KEY_PASSPHRASE=LOCKED_KEY_PASSPHRASE,
        EXTENSIONS=EXTENSIONS,
        C4GH=C4GH,
        GPG=GPG,
        OPENSSL=OPENSSL,
    )
