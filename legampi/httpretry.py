"""HTTP sessions that retry the way a busy service asks to be retried (EGA metadata API, RES).

urllib3's Retry, mounted on a requests Session, replaces hand-written loops: exponential backoff,
`Retry-After` honoured (429, 503), only idempotent methods retried, and a status list, so a 4xx
answer is final at once. Retries happen before any body is read: a stream that breaks half-way is
never silently restarted (RES maps that to `truncated`).

Error texts from requests and urllib3 carry the full URL, query string included (RES puts the
source key there), so callers describe failures with `safe_url` and `reason`, never with str(exc).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})  # busy or temporarily broken; a 501 or 4xx is final
RETRY_METHODS = frozenset({"GET", "HEAD"})  # idempotent; nothing legampi sends changes the server
RETRY_AFTER_MAX = 300.0  # seconds: a server asking for longer does not hold a batch job hostage
BACKOFF_MAX = 60.0


class _CappedRetry(Retry):
    """Retry whose `Retry-After` wait is capped at RETRY_AFTER_MAX (a server may ask for a day)."""

    def parse_retry_after(self, retry_after: str) -> float:
        return min(super().parse_retry_after(retry_after), RETRY_AFTER_MAX)


def retry_policy(retries: int, backoff: float, read_retries: int | None = None) -> Retry:
    """RETRIES more attempts after the first; waits backoff * 2**(n-1) s between them (the first retry
    is immediate, urllib3's rule), or what the server's Retry-After says. READ_RETRIES (default
    RETRIES) bounds retries after a read timeout, which each cost a whole timeout."""
    return _CappedRetry(
        total=retries,
        connect=retries,
        read=retries if read_retries is None else min(read_retries, retries),
        status=retries,
        other=0,
        redirect=5,
        backoff_factor=backoff,
        backoff_max=BACKOFF_MAX,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=RETRY_METHODS,
        respect_retry_after_header=True,
        raise_on_status=False,  # give back the last answer: callers report its status and reason
    )


def session(retries: int, backoff: float, read_retries: int | None = None) -> requests.Session:
    """A requests Session retrying per `retry_policy` on http:// and https://."""
    s = requests.Session()
    adapter = HTTPAdapter(max_retries=retry_policy(retries, backoff, read_retries))
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


def attempts(resp: requests.Response) -> int:
    """How many requests produced RESP (1 + the retries urllib3 made)."""
    retries = getattr(resp.raw, "retries", None)
    return 1 + len(retries.history) if retries is not None else 1


def safe_url(url: str) -> str:
    """URL without user:password@, query string or fragment: fit for an error message or a log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def gave_up(exc: BaseException) -> bool:
    """True when EXC is requests' wrapping of urllib3's "retries exhausted" (every attempt failed)."""
    return any(isinstance(arg, MaxRetryError) for arg in exc.args)


def reason(exc: BaseException) -> str:
    """The name of what went wrong (ReadTimeoutError, NewConnectionError...), never its text (URLs)."""
    for arg in exc.args:
        if isinstance(arg, MaxRetryError) and arg.reason is not None:
            return type(arg.reason).__name__
    return type(exc).__name__
