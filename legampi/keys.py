"""Crypt4GH key loading with the checks an archive needs.

Secret keys are parsed here rather than with `crypt4gh.keys.get_private_key` because that function
exits the process on a wrong passphrase and logs key material at DEBUG level.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

# crypt4gh.keys and cryptography are imported where a key is loaded: rank 0 of a job never loads one,
# and importing them costs every rank ~10 ms of start-up on a 2-core node.

_C4GH_MAGIC = b"c4gh-v1"
_SSH_MAGIC = b"openssh-key-v1\x00"
KEY_SIZE = 32


class KeyFileError(ValueError):
    """A key file is missing, unsafe, malformed, or locked with another passphrase."""


def _decode_string(stream: io.BytesIO, path: Path) -> bytes:
    raw_len = stream.read(2)
    if len(raw_len) != 2:
        raise KeyFileError(f"{path}: malformed Crypt4GH secret key (cut short)")
    n = int.from_bytes(raw_len, "big")
    data = stream.read(n)
    if len(data) != n:
        raise KeyFileError(f"{path}: malformed Crypt4GH secret key (cut short)")
    return data


def check_secret_key_mode(path: str | os.PathLike) -> None:
    """Refuse a secret key readable or writable by group/others: it would leak archive access."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise KeyFileError(f"secret key {p} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"secret key {p} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"secret key {p} is accessible by group or others (mode {st.st_mode & 0o777:03o}); run: chmod 600 {p}"
        )


def load_secret_key(path: str | os.PathLike, passphrase: str | None) -> bytes:
    """Raw 32-byte X25519 secret from a Crypt4GH-format key file (plain or passphrase-locked)."""
    from crypt4gh.keys import load_from_pem
    from crypt4gh.keys.kdf import KDFS, derive_key

    p = Path(path)
    check_secret_key_mode(p)
    try:
        data = load_from_pem(p)
    except (ValueError, OSError) as e:
        raise KeyFileError(f"secret key {p} is not a PEM key file ({type(e).__name__})") from None
    if data.startswith(_SSH_MAGIC):
        raise KeyFileError(
            f"secret key {p} is an OpenSSH key; convert it to a Crypt4GH key (crypt4gh-keygen) before using it"
        )
    stream = io.BytesIO(data)
    if stream.read(len(_C4GH_MAGIC)) != _C4GH_MAGIC:
        raise KeyFileError(f"secret key {p} is not a Crypt4GH private key")
    kdfname = _decode_string(stream, p)
    if kdfname != b"none" and kdfname not in KDFS:
        raise KeyFileError(f"secret key {p} uses an unsupported KDF {kdfname.decode('ascii', 'replace')}")
    salt = b""
    rounds = 0
    if kdfname != b"none":
        opts = _decode_string(stream, p)
        rounds = int.from_bytes(opts[:4], "big")
        salt = opts[4:]
    cipher = _decode_string(stream, p)
    blob = _decode_string(stream, p)
    if cipher == b"none":
        key = blob
    elif cipher == b"chacha20_poly1305":
        if not passphrase:
            raise KeyFileError(f"secret key {p} is passphrase-protected but no passphrase was given")
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

        shared = derive_key(kdfname, passphrase.encode("utf-8"), salt, rounds)
        try:
            key = ChaCha20Poly1305(shared).decrypt(blob[:12], blob[12:], None)
        except InvalidTag:
            raise KeyFileError(f"secret key {p}: wrong passphrase (the key does not unlock)") from None
    else:
        raise KeyFileError(f"secret key {p} uses an unsupported cipher {cipher.decode('ascii', 'replace')}")
    if len(key) != KEY_SIZE:
        raise KeyFileError(f"secret key {p} holds {len(key)} bytes of key material, expected {KEY_SIZE}")
    return bytes(key)


def load_public_key(path: str | os.PathLike) -> bytes:
    """Raw 32-byte X25519 public key from a Crypt4GH (or OpenSSH ed25519) public key file."""
    from crypt4gh.keys import get_public_key

    p = Path(path)
    if not p.is_file():
        raise KeyFileError(f"public key {p} does not exist or is not a file")
    try:
        key = get_public_key(str(p))
    except (ValueError, NotImplementedError, AssertionError, OSError) as e:
        raise KeyFileError(
            f"public key {p} cannot be read as a Crypt4GH public key ({type(e).__name__}: {e})"
        ) from None
    if len(key) != KEY_SIZE:
        raise KeyFileError(f"public key {p} holds {len(key)} bytes, expected {KEY_SIZE}")
    return bytes(key)


def public_from_secret(secret_key: bytes) -> bytes:
    """Public half of an X25519 secret (to check an inbox key pair matches)."""
    from crypt4gh import sodium

    return bytes(sodium.derive_pk(secret_key))


def fingerprint(pubkey: bytes) -> str:
    """Short stable id of a public key, recorded with each archived file to name its archive key."""
    return hashlib.sha256(bytes(pubkey)).hexdigest()[:16]
