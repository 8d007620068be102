"""The `[archive]` section (posix folder or S3 bucket) and where S3 credentials may come from.

The names are issue 16's interface, relied on by operators and scripts. Credentials are deliberately
NOT read from the INI (a config file is copied, mailed and committed far more often than a secret
should be): only `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (with `AWS_SESSION_TOKEN`) from the
environment, or a profile of the AWS shared credentials file. boto3's own chain is not used, because
it also probes the EC2 instance metadata service, which on an HPC node is a multi-second timeout and
never the operator's intent.

This module imports nothing from legampi, so `legampi.config` can build its `[archive]` section from
it without an import cycle: it raises `ArchiveConfigError(key, message)` and config.py wraps that in
its ConfigError (file, section, key).
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

BACKENDS = ("posix", "s3")
KEYS = ("backend", "s3_endpoint", "s3_bucket", "s3_prefix", "s3_region")
DEFAULT_REGION = "us-east-1"
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SECRET_HINT = re.compile(r"(secret|access_key|password|token|credential)", re.IGNORECASE)


class ArchiveConfigError(ValueError):
    """A problem with one key of `[archive]` (key None: with the credentials)."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


@dataclass(frozen=True)
class ArchiveConfig:
    """Where archived files go: `posix` (end_storage, as before issue 16) or an S3 bucket."""

    backend: str = "posix"
    s3_endpoint: str | None = None
    s3_bucket: str | None = None
    s3_prefix: str = ""  # "" or "a/b/" (always ends with "/")
    s3_region: str = DEFAULT_REGION


def from_section(values: Mapping[str, str]) -> ArchiveConfig:
    """Validate `[archive]` (a mapping of its keys; empty when the section is absent)."""
    vals = {k.lower(): str(v).strip() for k, v in values.items() if str(v).strip() != ""}
    for key in vals:
        if key in KEYS:
            continue
        if _SECRET_HINT.search(key):
            raise ArchiveConfigError(
                key,
                "credentials are never read from the configuration file: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY in the environment, or use the AWS shared credentials file",
            )
        raise ArchiveConfigError(key, f"unknown key (expected one of {', '.join(KEYS)})")
    backend = vals.get("backend", "posix").lower()
    if backend not in BACKENDS:
        raise ArchiveConfigError("backend", f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "posix":
        return ArchiveConfig()
    for key in ("s3_endpoint", "s3_bucket"):
        if key not in vals:
            raise ArchiveConfigError(key, "missing (required with backend = s3)")
    return ArchiveConfig(
        "s3",
        _endpoint(vals["s3_endpoint"]),
        _bucket(vals["s3_bucket"]),
        _prefix(vals.get("s3_prefix", "")),
        vals.get("s3_region", DEFAULT_REGION),
    )


def _endpoint(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ArchiveConfigError("s3_endpoint", f"must be an http:// or https:// URL, got {raw!r}")
    if parts.username or parts.password:
        raise ArchiveConfigError("s3_endpoint", "must not contain credentials (use the AWS_* environment)")
    try:
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        raise ArchiveConfigError("s3_endpoint", f"malformed port in {raw!r}") from None
    return raw.rstrip("/")


def _bucket(raw: str) -> str:
    if not _BUCKET_RE.match(raw) or ".." in raw:
        raise ArchiveConfigError("s3_bucket", f"{raw!r} is not a valid S3 bucket name (3-63 of a-z 0-9 . -)")
    return raw


def _prefix(raw: str) -> str:
    """An empty prefix, or a relative key prefix ending with "/" ("legampi" and "legampi/" are the same)."""
    if raw in ("", "/"):
        return ""
    p = PurePosixPath(raw)
    if raw.startswith("/") or any(part in ("..", ".") for part in raw.strip("/").split("/")) or "//" in raw:
        raise ArchiveConfigError("s3_prefix", f"{raw!r}: must be a relative key prefix without '.', '..' or '//'")
    return str(p) + "/"


@dataclass(frozen=True)
class Credentials:
    """An S3 key pair; the secret parts never appear in repr (logs, tracebacks)."""

    access_key: str
    secret_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    source: str = ""  # where they came from, e.g. "environment" or "~/.aws/credentials [default]"

    def secrets(self) -> list[str]:
        """Strings to scrub from text that came from outside legampi (botocore messages)."""
        return [s for s in (self.secret_key, self.session_token) if s]

    def __reduce__(self):  # not pickled to other ranks by accident: each rank resolves its own
        raise TypeError("S3 credentials are not picklable; each process resolves them itself")


def resolve_credentials(env: Mapping[str, str] | None = None) -> Credentials:
    """The environment's key pair, else the shared credentials file's profile; ArchiveConfigError if none."""
    env = os.environ if env is None else env
    key_id, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if key_id and secret:
        return Credentials(key_id, secret, env.get("AWS_SESSION_TOKEN") or None, "environment")
    if key_id or secret:
        missing = "AWS_SECRET_ACCESS_KEY" if key_id else "AWS_ACCESS_KEY_ID"
        raise ArchiveConfigError(None, f"S3 credentials: {missing} is not set (the other half is)")
    path = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or Path(env.get("HOME") or "~") / ".aws" / "credentials")
    path = path.expanduser()
    profile = env.get("AWS_PROFILE") or "default"
    parser = configparser.RawConfigParser()
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh)
    except FileNotFoundError:
        raise ArchiveConfigError(
            None,
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or write them to the "
            f"AWS shared credentials file ({path}, profile [{profile}])",
        ) from None
    except (OSError, configparser.Error) as exc:
        raise ArchiveConfigError(None, f"cannot read the AWS shared credentials file {path}: {exc}") from None
    if not parser.has_section(profile):
        raise ArchiveConfigError(None, f"the AWS shared credentials file {path} has no profile [{profile}]")
    sec = parser[profile]
    key_id, secret = sec.get("aws_access_key_id", "").strip(), sec.get("aws_secret_access_key", "").strip()
    if not (key_id and secret):
        raise ArchiveConfigError(None, f"{path} [{profile}]: needs both aws_access_key_id and aws_secret_access_key")
    token = sec.get("aws_session_token", "").strip() or None
    return Credentials(key_id, secret, token, f"{path} [{profile}]")
