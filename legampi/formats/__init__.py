"""Input formats: each module turns one kind of encrypted file into a stream of plaintext chunks.

The pipeline (legampi.stream) never looks inside a format: it asks `detect_format` what a file is and
`open_plaintext` for an iterator of plaintext chunks, so adding a format touches only this package.
Every module raises `IngestError` with an `error_kind` the tracking database stores as is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from legampi.formats.base import IngestError
from legampi.formats.base import read_exact_into as read_exact_into  # re-exported (rekey reads headers with it)

# Extension (lower case) -> format name, for the extensions an operator may list in [func] extensions.
FORMAT_BY_EXTENSION = {
    ".c4gh": "crypt4gh",
    ".cip": "legacy_aes",
    ".gpg": "openpgp",
    ".pgp": "openpgp",
    ".asc": "openpgp",
}
# Suffixes that mean "this is encrypted" even when they are not configured: such a file must not be
# archived as plaintext (it would be archived still encrypted for a key nobody records).
ENCRYPTED_LOOKING = frozenset(FORMAT_BY_EXTENSION) | {".enc", ".aes", ".crypt", ".csc", ".cipher"}


def _suffix(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def detect_format(rel: str, extensions: tuple[str, ...] | list[str]) -> str:
    """Name the input format of `rel` from its extension; refuse encrypted-looking unknown ones.

    A configured extension decides the format; an unconfigured suffix that still looks encrypted is a
    `format` error instead of being mistaken for plaintext.
    """
    suffix = _suffix(rel)
    configured = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    if suffix and suffix in configured:
        fmt = FORMAT_BY_EXTENSION.get(suffix)
        if fmt is None:
            raise IngestError(
                "format",
                f"{rel}: extension {suffix} is configured but no decryptor "
                f"handles it (known: {', '.join(sorted(FORMAT_BY_EXTENSION))})",
            )
        return fmt
    if suffix in ENCRYPTED_LOOKING:
        raise IngestError(
            "format",
            f"{rel}: extension {suffix} looks encrypted but is not in the configured "
            f"extensions ({', '.join(sorted(configured)) or 'none'}); refusing to "
            "archive it as plaintext",
        )
    return "plain"


def open_plaintext(
    src: BinaryIO | str | os.PathLike[str], fmt: str, ctx: Any, label: str | None = None
) -> Iterator[bytes | memoryview]:
    """Iterate over the plaintext of `src` (an open binary file or a path) decrypted as `fmt`.

    Chunks may be views into reused buffers: use each before asking for the next. `ctx` is a
    PipelineContext (duck-typed so formats stay independent of the pipeline module).
    """
    label = label or (str(src) if isinstance(src, (str, os.PathLike)) else str(getattr(src, "name", "<stream>")))
    chunk_size = getattr(ctx, "chunk_size", 4 * 1024 * 1024)
    if fmt in ("legacy_aes", "openpgp") and getattr(ctx, "decrypt_via", "local") == "res":
        from legampi.formats import res

        path = src if isinstance(src, (str, os.PathLike)) else getattr(src, "name", None)
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError("decrypting through the re-encryption service needs the source path")
        return res.fetch_plaintext(
            ctx.res_url,
            os.path.abspath(path),
            ctx.res_source_format,
            ctx.res_source_key,
            chunk_size=chunk_size,
            label=label,
        )
    if fmt == "openpgp":
        from legampi.formats import openpgp

        return openpgp.decrypt_stream(src, ctx.gnupg_home, ctx.gpg_passphrase, chunk_size=chunk_size, label=label)
    stream, owned = _as_stream(src)
    if fmt == "crypt4gh":
        from legampi.formats import crypt4gh

        if ctx.inbox_secret_key is None:
            raise IngestError("config", f"{label}: is Crypt4GH but [crypto] inbox_secret_key is not set")
        return _closing(
            crypt4gh.decrypt_stream(stream, ctx.inbox_secret_key, chunk_size=chunk_size, label=label),
            stream if owned else None,
        )
    if fmt == "legacy_aes":
        from legampi.formats import legacy_aes

        if ctx.legacy_password is None:
            raise IngestError("config", f"{label}: is a legacy .cip file but no legacy password is configured")
        return _closing(
            legacy_aes.decrypt_stream(
                stream, ctx.legacy_password, ctx.legacy_cipher, chunk_size=chunk_size, label=label
            ),
            stream if owned else None,
        )
    if fmt == "plain":
        from legampi.formats import plain

        return _closing(plain.read_stream(stream, chunk_size=chunk_size, label=label), stream if owned else None)
    raise IngestError("format", f"{label}: unsupported format {fmt!r}")


def _as_stream(src: BinaryIO | str | os.PathLike[str]) -> tuple[BinaryIO, bool]:
    if isinstance(src, (str, os.PathLike)):
        return open(Path(src), "rb", buffering=0), True
    return src, False


def _closing(it: Iterator[bytes | memoryview], stream: BinaryIO | None) -> Iterator[bytes | memoryview]:
    try:
        yield from it
    finally:
        if stream is not None:
            stream.close()
