"""Unencrypted input (no configured extension): read as is, refusing obvious Crypt4GH content."""

from __future__ import annotations

from collections.abc import Iterator

from legampi.formats.base import ByteSource, IngestError, read_exact_into

_C4GH_MAGIC = b"crypt4gh"


def read_stream(stream: ByteSource, chunk_size: int = 4 << 20, label: str = "<stream>") -> Iterator[memoryview]:
    """Yield the file in whole 64 KiB multiples (views into a reused buffer).

    A "plain" file that starts with the Crypt4GH magic was misnamed: archiving it would wrap
    ciphertext whose key nobody records, so it is refused as a format error.
    """
    size = max(65536, chunk_size - chunk_size % 65536)
    buf = bytearray(size)
    view = memoryview(buf)
    first = True
    while True:
        n = read_exact_into(stream, buf)
        if first and n >= len(_C4GH_MAGIC) and bytes(view[: len(_C4GH_MAGIC)]) == _C4GH_MAGIC:
            raise IngestError(
                "format",
                f"{label}: has no encryption extension but starts with the Crypt4GH "
                "magic; rename it with the .c4gh extension",
            )
        first = False
        if n == 0:
            return
        yield view[:n]
        if n < size:
            return
