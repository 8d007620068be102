"""Decrypt through the seed's re-encryption service (RES): plaintext streamed back over HTTP.

Kept for sites whose legacy keys live only in RES. An HTTP body can end early without an error on
our side, so we count bytes against Content-Length and treat any broken stream as `truncated`: a short
download must never become a short archived file. The source key travels in the query string (the
seed's API); we therefore never put the URL, or a requests exception message that contains it, into
an error.
"""

from __future__ import annotations

from collections.abc import Iterator

import requests

from legampi.formats.base import IngestError
from legampi.redact import redact

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0


def fetch_plaintext(
    url: str | None,
    path: str,
    source_format: str,
    source_key: str | None,
    chunk_size: int = 4 << 20,
    label: str = "<stream>",
    timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
    session: requests.Session | None = None,
) -> Iterator[bytes]:
    """Plaintext chunks of `path` as decrypted by RES (`destinationFormat=plain`).

    A generator: the request is made at the first next(), and the response is always closed.
    """
    if not url:
        raise IngestError("config", f"{label}: decrypt_via = res but no res_url is configured")
    params = {"filePath": path, "sourceFormat": source_format, "destinationFormat": "plain"}
    if source_key is not None:
        params["sourceKey"] = source_key
    getter = session.get if session is not None else requests.get
    try:
        resp = getter(url, params=params, stream=True, timeout=timeout)
    except requests.RequestException as e:
        # `from None`: the exception text carries the full URL including sourceKey.
        raise IngestError("io", f"{label}: cannot reach the re-encryption service ({type(e).__name__})") from None
    yield from _body(resp, chunk_size, label, [source_key] if source_key else [])


def _body(resp: requests.Response, chunk_size: int, label: str, secrets: list[str]) -> Iterator[bytes]:
    try:
        if resp.status_code != 200:
            reason = redact(str(resp.reason or ""), secrets)  # the service's words: it knows the key
            raise IngestError(
                "io", f"{label}: re-encryption service answered HTTP {resp.status_code} {reason}".rstrip()
            )
        declared = resp.headers.get("Content-Length")
        expected = int(declared) if declared is not None and declared.strip().isdigit() else None
        received = 0
        try:
            for chunk in resp.iter_content(chunk_size=max(65536, chunk_size)):
                received += len(chunk)
                yield chunk
        except requests.RequestException as e:
            raise IngestError(
                "truncated",
                f"{label}: plaintext stream from the re-encryption service broke "
                f"after {received} bytes ({type(e).__name__})",
            ) from None
        if expected is not None and received != expected:
            raise IngestError(
                "truncated", f"{label}: re-encryption service sent {received} of {expected} declared bytes"
            )
    finally:
        resp.close()
