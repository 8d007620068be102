"""What every format module shares: the per-file failure (`IngestError` and its kinds) and exact reads.

A module of its own so that no format module imports the package that dispatches to it
(legampi.formats imports each format): no import cycle. `legampi.formats` re-exports IngestError and
read_exact_into for the rest of legampi.
"""

from __future__ import annotations

import io
from typing import IO

ERROR_KINDS = (
    "checksum",
    "corrupt",
    "truncated",
    "key",
    "format",
    "io",
    "nospace",
    "archive_conflict",
    "unsafe_path",
    "transfer_corrupt",  # the source's bytes differ from the checksum of the file as transferred
    # the operator's configuration (missing or wrong key, password, passphrase): not the file's fault, so
    # the file is released unchanged and the job stops (legampi.ingest), never failed or quarantined
    "config",
)


class IngestError(Exception):
    """A per-file failure with a kind the operator can act on (re-transfer, fix key, free space...)."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message


# What every decryptor reads from: a file, a pipe, an HTTP body, or a RawIOBase wrapper that hashes
# what passes through it (checksum.HashingReader, transfer checksums).
ByteSource = IO[bytes] | io.RawIOBase


def read_exact_into(stream: ByteSource, buf: bytearray | memoryview) -> int:
    """Fill `buf` unless EOF comes first; return the byte count.

    Pipes, sockets and network streams return short reads; formats with fixed-size records (Crypt4GH
    segments) must not mistake a short read for the end of the file.
    """
    view = memoryview(buf)
    total = 0
    size = len(view)
    readinto = getattr(stream, "readinto", None)
    while total < size:
        if readinto is not None:
            n = readinto(view[total:])
        else:
            data = stream.read(size - total)
            n = len(data)
            view[total : total + n] = data
        if n is None:  # non-blocking stream with nothing yet; our streams are blocking
            raise OSError("non-blocking stream returned no data")
        if n == 0:
            break
        total += n
    return total
