"""Decrypt through the seed's re-encryption service (RES): plaintext streamed back over HTTP.

Kept for sites whose legacy keys live only in RES. An HTTP body can end early without an error on
our side, so we count bytes against Content-Length and treat any broken stream as `truncated`: a short
download must never become a short archived file. The source key travels in the query string (the
seed's API); we therefore never put the full URL, or a requests exception message that contains it,
into an error: only `httpretry.safe_url` (no credentials, no query).

A busy or restarting service (429, 5xx, refused connection, no answer within the timeout) is retried
by urllib3 with backoff and its Retry-After before any byte is read; a stream that breaks after it
started is never retried (that is `truncated`, and the file's next attempt starts it again).
"""

from __future__ import annotations

from collections.abc import Iterator

import requests

from legampi import httpretry
from legampi.formats.base import IngestError
from legampi.redact import redact

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0
RETRIES = 4  # after the first attempt; with BACKOFF the waits are 0, 1, 2, 4 s (or Retry-After)
BACKOFF = 0.5
READ_RETRIES = 1  # a service that sent no answer in READ_TIMEOUT gets one more chance, not four


def fetch_plaintext(
    url: str | None,
    path: str,
    source_format: str,
    source_key: str | None,
    chunk_size: int = 4 << 20,
    label: str = "<stream>",
    timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
    session: requests.Session | None = None,
    retries: int = RETRIES,
    backoff: float = BACKOFF,
) -> Iterator[bytes]:
    """Plaintext chunks of `path` as decrypted by RES (`destinationFormat=plain`).

    A generator: the request is made at the first next(), and the response is always closed. Without
    a SESSION one retrying per `httpretry.retry_policy(retries, backoff)` is made for this file.
    """
    if not url:
        raise IngestError("config", f"{label}: decrypt_via = res but no res_url is configured")
    params = {"filePath": path, "sourceFormat": source_format, "destinationFormat": "plain"}
    if source_key is not None:
        params["sourceKey"] = source_key
    shown = httpretry.safe_url(url)
    own = session is None
    http = httpretry.session(retries, backoff, READ_RETRIES) if session is None else session
    try:
        try:
            resp = http.get(url, params=params, stream=True, timeout=timeout)
        except requests.RequestException as e:
            # `from None`: the exception text carries the full URL including sourceKey.
            gave_up = ", gave up after retrying" if httpretry.gave_up(e) else ""
            raise IngestError(
                "io", f"{label}: cannot reach the re-encryption service {shown}{gave_up} ({httpretry.reason(e)})"
            ) from None
        yield from _body(resp, chunk_size, label, [source_key] if source_key else [], shown)
    finally:
        if own:
            http.close()


def _body(
    resp: requests.Response, chunk_size: int, label: str, secrets: list[str], shown: str = "the service"
) -> Iterator[bytes]:
    try:
        if resp.status_code != 200:
            reason = redact(str(resp.reason or ""), secrets)  # the service's words: it knows the key
            n = httpretry.attempts(resp)
            tries = f" (gave up after {n} attempts)" if n > 1 else ""
            raise IngestError(
                "io",
                f"{label}: re-encryption service {shown} answered HTTP {resp.status_code} {reason}".rstrip() + tries,
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
