"""The transfer checksum: the source's bytes as transferred (EGA `checksum`), hashed in the pipeline's one read.

The decryptors read the source through `TransferHash`, so checking the transferred file costs a hash of
bytes already in memory, not a second read. gpg reads its input from a file descriptor, so for OpenPGP a
`Feeder` thread passes the bytes through a pipe after hashing them.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from typing import Any

from legampi.checksum import is_hex_digest
from legampi.formats import IngestError

# Failures that damaged bytes cause: with a transfer checksum registered, a mismatch names the real cause.
DAMAGE_KINDS = frozenset({"corrupt", "truncated", "format"})


def expected(value: str | None, algo: str | None, rel: str) -> tuple[str, str] | None:
    """(algorithm, lower-case hex digest) of a registered transfer checksum, or None when none is."""
    if not value:
        return None
    kind = (algo or "").lower()
    if kind not in ("md5", "sha256"):
        raise IngestError("checksum", f"{rel}: registered transfer checksum type {algo!r} is not md5 or sha256")
    digest = value.strip().lower()
    if not is_hex_digest(digest, kind):
        raise IngestError("checksum", f"{rel}: registered transfer {kind} {value!r} is not a valid {kind} digest")
    return kind, digest


class TransferHash:
    """The source as the decryptors read it (readinto/read), hashing every byte on the way."""

    def __init__(self, raw: Any, algo: str, digest: str, rel: str) -> None:
        self.raw, self.algo, self.digest, self.rel = raw, algo, digest, rel
        self.hasher = hashlib.new(algo)

    def readinto(self, buf: Any) -> int:
        n = self.raw.readinto(buf)
        if n:
            self.hasher.update(memoryview(buf)[:n])
        return n

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hasher.update(data)
        return data

    def drain(self, bufsize: int) -> None:
        """Read and hash what the decryptor left unread (trailing bytes; everything after a failure)."""
        buf = bytearray(min(bufsize, 1 << 20))
        while self.readinto(buf):
            pass

    def mismatch(self) -> IngestError | None:
        """The `transfer_corrupt` failure when the bytes read so far are not the registered ones."""
        got = self.hasher.hexdigest()
        if got == self.digest:
            return None
        return IngestError(
            "transfer_corrupt",
            f"{self.rel}: transferred file {self.algo} mismatch: manifest expects {self.digest}, "
            f"computed {got}; re-transfer it",
        )


class Feeder:
    """A pipe a thread fills from a TransferHash: how gpg, which reads a file descriptor, gets hashed input."""

    def __init__(self, reader: TransferHash, chunk_size: int) -> None:
        r, w = os.pipe()
        self.pipe: Any = open(r, "rb", buffering=0)
        self.error: OSError | None = None
        self.thread = threading.Thread(target=self._feed, args=(reader, w, chunk_size), daemon=True)
        self.thread.start()

    def _feed(self, reader: TransferHash, w: int, chunk_size: int) -> None:
        buf = bytearray(chunk_size)
        view = memoryview(buf)
        try:
            with open(w, "wb", buffering=0) as out:
                while n := reader.readinto(buf):
                    off = 0
                    while off < n:
                        off += out.write(view[off:n])
        except BrokenPipeError:
            return  # gpg stopped reading: its own error, or the drain after it, says why
        except OSError as e:
            self.error = e  # reading the source failed: the caller reports it as the file's I/O error

    def after_start(self, chunks: Iterator[Any]) -> Iterator[Any]:
        """gpg's plaintext chunks; once gpg has started (holding its own copy of the pipe), our copy of the
        read end is closed, so a gpg that dies early cannot leave the feeder blocked on a full pipe."""
        try:
            first = next(chunks)
        except StopIteration:
            return
        finally:
            self.release()
        yield first
        yield from chunks

    def release(self) -> None:
        """Close our copy of the read end once gpg holds its own (else a gpg that died blocks the feeder)."""
        if not self.pipe.closed:
            self.pipe.close()

    def finish(self) -> OSError | None:
        """Wait for the thread (gpg has read everything, or is gone); return its error reading the source."""
        self.release()
        self.thread.join()
        return self.error


def verified(blocks: Iterator[Any], reader: TransferHash, feeder: Feeder | None, bufsize: int) -> Iterator[Any]:
    """Pass the pipeline's output blocks through; when they end, or decryption fails on damaged bytes,
    read the rest of the source and fail with `transfer_corrupt` if it is not what was transferred."""
    try:
        yield from blocks
    except IngestError as e:
        if e.kind not in DAMAGE_KINDS:
            raise
        _settle(feeder)
        reader.drain(bufsize)
        raise (reader.mismatch() or e) from None
    _settle(feeder)
    reader.drain(bufsize)
    if bad := reader.mismatch():
        raise bad


def _settle(feeder: Feeder | None) -> None:
    if feeder is not None and (err := feeder.finish()) is not None:
        raise err  # reading the source failed: the pipeline reports it as the file's I/O error
