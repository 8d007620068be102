"""Dataset manifests: the seed's tab format, EGA JSON metadata, and the EGA metadata API client.

Parsing is strict and all-or-nothing: a malformed line, a bad checksum, an absolute path or one with
``..``, a control character or an over-long name is refused with the source and line number, so nothing
from a bad manifest is ever registered. Reading is bounded in memory whatever the content: tab manifests
are read line by line (a line over MAX_LINE_BYTES is refused without being held), EGA JSON over
MAX_JSON_BYTES is refused before it is parsed, and at most MAX_ENTRIES files are taken from one manifest.
A UTF-8 byte order mark and CRLF line ends are accepted in every format.

EGA semantics (the EGA data API's file objects, as EGA's pyega3 client reads them): ``checksum`` /
``checksumType`` describe the ENCRYPTED file as transferred, ``unencryptedChecksum`` /
``unencryptedChecksumType`` (MD5 unless stated) the plaintext, ``fileSize`` the size as transferred.
Entries carry ``md5``/``sha256`` (plaintext), ``transfer_checksum``/``transfer_checksum_type`` and ``size``:
the transferred size (bytes of the file as received, encrypted; the file table's ``size``), in both
formats. The plaintext size is never taken from a manifest: the pipeline records it (``plain_size``).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import requests

from . import httpretry
from .checksum import is_hex_digest
from .jsonpos import list_items
from .workspace import UnsafeName, check_file_name, forbidden_character, shown

MAX_LINE_BYTES = 64 * 1024  # one tab manifest line, without its line end
MAX_JSON_BYTES = 64 * 1024 * 1024  # an EGA JSON manifest (about 150,000 file objects of the API's shape)
MAX_ENTRIES = 1_000_000  # files in one manifest: bounds what registration holds in memory
MAX_ID_BYTES = 1024  # fileId / datasetId

BOM = b"\xef\xbb\xbf"
CHECKSUM_TYPES = {"MD5": "md5", "SHA256": "sha256", "SHA-256": "sha256"}


class ManifestError(ValueError):
    """A manifest that cannot be registered; the message names the source and line."""


def _forbidden(value: str, what: str, where: str) -> None:
    problem = forbidden_character(value)
    if problem:
        raise ManifestError(f"{where}: {what} {shown(value)} {problem}")


def safe_file_name(name: str, where: str) -> str:
    """NAME as a normalised file name (relative POSIX path), refusing with WHERE (source:line) anything
    workspace.check_file_name refuses at registration: what could leave its folder or no file system
    could hold."""
    try:
        return check_file_name(name, strict=True).as_posix()
    except UnsafeName as exc:
        raise ManifestError(f"{where}: {exc}") from None


def _checksum(value: Any, kind: str, where: str, field: str | None = None) -> str | None:
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    if not is_hex_digest(text, kind):
        digits = 32 if kind == "md5" else 64
        label = f"{field} ({kind})" if field else kind
        raise ManifestError(f"{where}: bad {label} {shown(str(value))} (want {digits} hexadecimal digits)")
    return text


def _size(value: Any, where: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or (isinstance(value, str) and len(value) > 30):
        raise ManifestError(f"{where}: bad size {shown(str(value))} (want a whole number of bytes)")
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ManifestError(f"{where}: bad size {shown(str(value))} (want a whole number of bytes)") from None
    if n < 0:
        raise ManifestError(f"{where}: negative size {n}")
    return n


def _entry(
    file_id: str,
    name: str,
    md5: Any,
    sha256: Any,
    size: Any,
    line: int,
    where: str,
    transfer: tuple[str, str] | None = None,
) -> dict[str, Any]:
    file_name = safe_file_name(name, where)
    e = {
        "file_id": file_id or file_name,
        "file_name": file_name,
        "md5": _checksum(md5, "md5", where),
        "sha256": _checksum(sha256, "sha256", where),
        "size": _size(size, where),
        "line": line,
        "transfer_checksum": transfer[0] if transfer else None,
        "transfer_checksum_type": transfer[1] if transfer else None,
    }
    if e["md5"] is None and e["sha256"] is None:
        raise ManifestError(f"{where}: no plaintext checksum (md5 or sha256) for {file_name!r}")
    return e


def _check_unique(entries: list[dict[str, Any]], source: str) -> None:
    ids: dict[str, int] = {}
    names: dict[str, int] = {}
    for e in entries:
        for key, seen in (("file_id", ids), ("file_name", names)):
            if e[key] in seen:
                raise ManifestError(f"{source}:{e['line']}: {key} {e[key]!r} already given on line {seen[e[key]]}")
            seen[e[key]] = e["line"]


def _too_many(n: int, where: str) -> None:
    if n > MAX_ENTRIES:
        raise ManifestError(f"{where}: more than {MAX_ENTRIES} files in one manifest; split it")


# ---------------------------------------------------------------------- tab manifests
def _tab_lines(fh: BinaryIO, source: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line without its line end; an over-long line is refused unread."""
    if fh.read(len(BOM)) != BOM:
        fh.seek(0)
    limit = MAX_LINE_BYTES + 2  # room for "\r\n": a line of exactly MAX_LINE_BYTES is read whole
    lineno = 0
    while True:
        raw = fh.readline(limit)
        if not raw:
            return
        lineno += 1
        if len(raw) == limit and not raw.endswith(b"\n"):
            raise ManifestError(f"{source}:{lineno}: line longer than {MAX_LINE_BYTES} bytes; refused")
        body = raw[:-1] if raw.endswith(b"\n") else raw
        body = body[:-1] if body.endswith(b"\r") else body
        if len(body) > MAX_LINE_BYTES:
            raise ManifestError(f"{source}:{lineno}: line longer than {MAX_LINE_BYTES} bytes; refused")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(
                f"{source}:{lineno}: not valid UTF-8 (byte 0x{body[exc.start]:02x} at byte {exc.start + 1} of the line)"
            ) from None
        yield lineno, text


def _parse_tab_stream(fh: BinaryIO, source: str) -> list[dict[str, Any]]:
    entries = []
    for lineno, raw in _tab_lines(fh, source):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        where = f"{source}:{lineno}"
        cols = raw.split("\t")
        if len(cols) < 2 or len(cols) > 4:
            raise ManifestError(
                f"{where}: want 2 to 4 tab-separated columns (name, md5, size, sha256), got {len(cols)}"
            )
        name, md5 = cols[0], cols[1]
        size = cols[2] if len(cols) > 2 else None
        sha = cols[3] if len(cols) > 3 else None
        if not md5.strip():
            raise ManifestError(f"{where}: missing md5")
        entries.append(_entry("", name, md5, sha, size, lineno, where))
        _too_many(len(entries), where)
    _check_unique(entries, source)
    return entries


def parse_tab(text: str, source: str) -> list[dict[str, Any]]:
    """The seed's tab manifest: ``name<TAB>md5[<TAB>size[<TAB>sha256]]``: md5 and sha256 of the plaintext,
    size the transferred size (bytes of the encrypted file as received, like EGA's ``fileSize``);
    ``#`` comments, blank lines, a BOM and CRLF line ends allowed."""
    return _parse_tab_stream(io.BytesIO(text.encode("utf-8", "surrogatepass")), source)


# ---------------------------------------------------------------------- EGA JSON
def _ctype(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None or value == "":
        return "md5"  # EGA's default
    kind = CHECKSUM_TYPES.get(str(value).strip().upper())
    if kind is None:
        raise ManifestError(f"{where}: unsupported {key} {shown(str(value))} (want MD5 or SHA256)")
    return kind


def _ega_entry(obj: Any, line: int, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: not an object")
    for key in ("fileId", "fileName"):
        if not obj.get(key):
            raise ManifestError(f"{where}: missing {key}")
    file_id, name = str(obj["fileId"]), str(obj["fileName"])
    _check_id(file_id, "fileId", where)
    plain: dict[str, str | None] = {"md5": None, "sha256": None}

    def give(kind: str, value: str | None, field: str) -> None:
        if value is not None and plain[kind] not in (None, value):
            raise ManifestError(f"{where}: {field} {value} contradicts the plaintext {kind} {plain[kind]} given too")
        plain[kind] = value or plain[kind]

    if obj.get("unencryptedChecksum") not in (None, ""):
        kind = _ctype(obj, "unencryptedChecksumType", where)
        give(kind, _checksum(obj["unencryptedChecksum"], kind, where, "unencryptedChecksum"), "unencryptedChecksum")
    give("md5", _checksum(obj.get("fileMd5"), "md5", where, "fileMd5"), "fileMd5")  # plaintext by name
    give("sha256", _checksum(obj.get("sha256"), "sha256", where, "sha256"), "sha256")
    transfer = None
    if obj.get("checksum") not in (None, ""):
        kind = _ctype(obj, "checksumType", where)
        transfer = (_checksum(obj["checksum"], kind, where, "checksum") or "", kind)
    if plain["md5"] is None and plain["sha256"] is None:
        if transfer:
            raise ManifestError(
                f"{where}: {shown(name)} has only `checksum`, which in EGA metadata is the checksum of the "
                "ENCRYPTED file as transferred; a plaintext checksum is needed too "
                "(`unencryptedChecksum`, with `unencryptedChecksumType` MD5 or SHA256)"
            )
        raise ManifestError(
            f"{where}: no plaintext checksum (unencryptedChecksum, fileMd5 or sha256) for {shown(name)}"
        )
    return _entry(file_id, name, plain["md5"], plain["sha256"], obj.get("fileSize"), line, where, transfer)


def _check_id(value: str, what: str, where: str) -> None:
    if len(value) > MAX_ID_BYTES or len(value.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise ManifestError(f"{where}: {what} {shown(value)} is longer than {MAX_ID_BYTES} bytes")
    _forbidden(value, what, where)


def parse_ega_json(text: str, source: str) -> tuple[str | None, list[dict[str, Any]]]:
    """EGA metadata JSON: a list of file objects (or {"files": [...]}, or the API's
    {"response": {"result": [...]}}); returns (dataset id found in it, entries)."""
    if len(text) > MAX_JSON_BYTES:
        raise ManifestError(f"{source}: JSON manifest larger than {MAX_JSON_BYTES} bytes; refused")
    text = text.removeprefix("\ufeff")
    try:
        items = list_items(text, _too_many, source)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{source}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # a number of over 4300 digits; nesting deeper than the stack
        if isinstance(exc, ManifestError):
            raise
        raise ManifestError(f"{source}: not usable JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    if items is None:
        raise ManifestError(f"{source}: want a JSON list of file objects")
    entries, datasets = [], set()
    for i, (obj, line) in enumerate(items, 1):
        where = f"{source}:{line}: item {i}"
        entries.append(_ega_entry(obj, line, where))
        if obj.get("datasetId"):
            _check_id(str(obj["datasetId"]), "datasetId", where)
            datasets.add(str(obj["datasetId"]))
    if len(datasets) > 1:
        listed = ", ".join(shown(d, 40) for d in sorted(datasets)[:5])
        raise ManifestError(
            f"{source}: lists files of several datasets ({listed}{', ...' if len(datasets) > 5 else ''})"
        )
    _check_unique(entries, source)
    return (datasets.pop() if datasets else None), entries


def _decode_json(data: bytes, source: str) -> str:
    data = data.removeprefix(BOM)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ManifestError(f"{source}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x})") from None


def _looks_like_json(fh: BinaryIO) -> bool:
    """True when the first byte after a BOM and white space is '[' or '{'; reads in bounded chunks."""
    first = fh.read(len(BOM))
    chunk = first.removeprefix(BOM)
    while True:
        stripped = chunk.lstrip(b" \t\r\n\f\v")
        if stripped:
            fh.seek(0)
            return stripped[:1] in (b"[", b"{")
        chunk = fh.read(1 << 16)
        if not chunk:
            fh.seek(0)
            return False


def load(path: Path, dataset_id: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Read a manifest file (JSON when it starts with '[' or '{', else tab) and decide its dataset id."""
    source = str(path)
    try:
        with open(path, "rb") as fh:
            if _looks_like_json(fh):
                if os.fstat(fh.fileno()).st_size > MAX_JSON_BYTES:
                    raise ManifestError(f"{source}: JSON manifest larger than {MAX_JSON_BYTES} bytes; refused")
                data = fh.read(MAX_JSON_BYTES + 1)
                if len(data) > MAX_JSON_BYTES:  # grew while we looked
                    raise ManifestError(f"{source}: JSON manifest larger than {MAX_JSON_BYTES} bytes; refused")
                text = _decode_json(data, source)
                del data  # do not hold the bytes and the text while parsing
                found, entries = parse_ega_json(text, source)
            else:
                found, entries = None, _parse_tab_stream(fh, source)
    except OSError as exc:
        raise ManifestError(f"{source}: cannot read manifest: {exc}") from None
    if dataset_id and found and dataset_id != found:
        raise ManifestError(f"{source}: manifest is for dataset {found}, not {dataset_id}")
    ds = dataset_id or found or path.stem
    if not ds:
        raise ManifestError(f"{source}: cannot tell the dataset id; give --dataset")
    return ds, entries


# ---------------------------------------------------------------------- EGA metadata API
class ApiError(OSError):
    """The EGA metadata API did not give a usable answer (an I/O error, as requests' own HTTPError is)."""


def _bounded_body(r: requests.Response, url: str) -> bytes:
    """The answer's body, refused (unread) once it passes MAX_JSON_BYTES."""
    declared = r.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > MAX_JSON_BYTES:
        raise ManifestError(f"EGA API {url}: answer of {declared} bytes is over {MAX_JSON_BYTES}; refused")
    body = bytearray()
    for chunk in r.iter_content(1 << 20):
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise ManifestError(f"EGA API {url}: answer larger than {MAX_JSON_BYTES} bytes; refused")
    return bytes(body)


def fetch_metadata(
    api_url: str,
    dataset_id: str,
    user: str | None,
    password: str | None,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 0.5,
) -> str:
    """GET the dataset's file list from the EGA API (``DATASETID`` in the URL); 429/5xx answers,
    timeouts and refused connections are retried with backoff (and Retry-After), see httpretry."""
    url = api_url.replace("DATASETID", dataset_id)
    shown = httpretry.safe_url(url)  # never the URL's user:password@ in an error
    auth = (user, password) if user is not None and password is not None else None
    with httpretry.session(retries, backoff) as http:
        try:
            with http.get(url, auth=auth, timeout=timeout, headers={"Accept": "application/json"}, stream=True) as r:
                if r.status_code == 200:
                    text = _decode_json(_bounded_body(r, shown), shown)
                    parse_ega_json(text, shown)  # refuse garbage before anyone writes it anywhere
                    return text
                last = f"HTTP {r.status_code} {r.reason}"
                if r.status_code not in httpretry.RETRY_STATUSES:
                    raise ApiError(f"EGA API {shown}: {last}")
                n = httpretry.attempts(r)
        except requests.RequestException as exc:
            if not httpretry.gave_up(exc):  # e.g. the body broke off: urllib3 retries no half-read answer
                raise ApiError(f"EGA API {shown}: {httpretry.reason(exc)}") from None
            last, n = httpretry.reason(exc), retries + 1
    raise ApiError(f"EGA API {shown}: gave up after {n} attempts, last error: {last}")
