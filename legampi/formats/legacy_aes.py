"""Legacy EGA `.cip` files: a 16-byte IV followed by AES-CTR ciphertext, no header and no MAC.

The key comes from a shared password through PBKDF2-HMAC-SHA1 with a fixed salt (as the seed's
re-encryption service did). Without a MAC a wrong password decrypts silently to garbage, so only the
plaintext checksum catches it; the pipeline's checksum error says so.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from legampi.formats.base import ByteSource, IngestError, read_exact_into

SALT = bytes.fromhex("f42201009edf4e15")
ITERATIONS = 1024
IV_SIZE = 16
KEY_SIZES = {"aes128": 16, "aes256": 32}
# Appended to checksum errors of .cip files: the only visible symptom of a wrong password.
WRONG_PASSWORD_HINT = "wrong legacy password?"


def derive_key(password: str, cipher: str = "aes128") -> bytes:
    """PBKDF2-HMAC-SHA1 key for the legacy scheme (16 bytes for aes128, 32 for aes256)."""
    try:
        size = KEY_SIZES[cipher]
    except KeyError:
        raise ValueError(f"unknown legacy cipher {cipher!r} (expected aes128 or aes256)") from None
    return hashlib.pbkdf2_hmac("sha1", password.encode("utf-8"), SALT, ITERATIONS, size)


def _ctr(key: bytes, iv: bytes) -> Cipher:
    # CTR with the IV as one 128-bit big-endian counter, as OpenSSL and the seed service do.
    return Cipher(algorithms.AES(key), modes.CTR(iv))


def decrypt_stream(
    stream: ByteSource, password: str, cipher: str = "aes128", chunk_size: int = 4 << 20, label: str = "<stream>"
) -> Iterator[bytes]:
    """Plaintext chunks of a `.cip` stream; reads are whole 64 KiB multiples to suit the encryptor."""
    key = derive_key(password, cipher)
    iv = bytearray(IV_SIZE)
    n = read_exact_into(stream, iv)
    if n < IV_SIZE:
        raise IngestError("truncated", f"{label}: legacy .cip file is {n} bytes, shorter than its 16-byte IV")
    decryptor = _ctr(key, bytes(iv)).decryptor()
    size = max(65536, chunk_size - chunk_size % 65536)
    buf = bytearray(size)
    view = memoryview(buf)
    while True:
        n = read_exact_into(stream, buf)
        if n == 0:
            break
        yield decryptor.update(view[:n])
        if n < size:
            break
    tail = decryptor.finalize()
    if tail:
        yield tail


def encrypt_stream(
    chunks: Iterable[bytes], password: str, cipher: str = "aes128", iv: bytes | None = None
) -> Iterator[bytes]:
    """Produce a `.cip` stream (IV + AES-CTR); for tests and for exporting to legacy consumers."""
    iv = os.urandom(IV_SIZE) if iv is None else iv
    if len(iv) != IV_SIZE:
        raise ValueError("IV must be 16 bytes")
    encryptor = _ctr(derive_key(password, cipher), iv).encryptor()
    yield iv
    for chunk in chunks:
        yield encryptor.update(chunk)
    tail = encryptor.finalize()
    if tail:
        yield tail
