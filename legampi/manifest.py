"""Dataset manifests: the seed's tab format, EGA JSON metadata, and the EGA metadata API client.

Parsing is pure (text in, entries out) and strict: a malformed line, a bad checksum, an absolute path or
one with ``..`` is refused with the line number, so nothing from a bad manifest is ever registered.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path, PurePosixPath
from typing import Any

import requests

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """A manifest that cannot be registered; the message names the source and line."""


def safe_relpath(name: str, where: str) -> str:
    """Return NAME as a normalised relative POSIX path, refusing anything that could leave its folder."""
    if not name or name.strip() != name:
        raise ManifestError(f"{where}: empty file name or leading/trailing white space in {name!r}")
    if "\x00" in name or "\\" in name:
        raise ManifestError(f"{where}: file name {name!r} contains a NUL or backslash")
    p = PurePosixPath(name)
    if p.is_absolute():
        raise ManifestError(f"{where}: file name {name!r} is an absolute path; names are relative to receiving")
    if any(part == ".." for part in p.parts):
        raise ManifestError(f"{where}: file name {name!r} contains '..' and could escape its folder")
    parts = [q for q in p.parts if q != "."]
    if not parts:
        raise ManifestError(f"{where}: file name {name!r} names no file")
    return "/".join(parts)


def _checksum(value: Any, kind: str, where: str) -> str | None:
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    pattern = HEX32 if kind == "md5" else HEX64
    if not pattern.match(text):
        digits = 32 if kind == "md5" else 64
        raise ManifestError(f"{where}: bad {kind} {value!r} (want {digits} hexadecimal digits)")
    return text


def _size(value: Any, where: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ManifestError(f"{where}: bad size {value!r} (want a whole number of bytes)") from None
    if n < 0:
        raise ManifestError(f"{where}: negative size {n}")
    return n


def _entry(file_id: str, name: str, md5: Any, sha256: Any, size: Any, line: int, where: str) -> dict[str, Any]:
    rel = safe_relpath(name, where)
    e = {
        "file_id": file_id or rel,
        "file_name": rel,
        "md5": _checksum(md5, "md5", where),
        "sha256": _checksum(sha256, "sha256", where),
        "size": _size(size, where),
        "line": line,
    }
    if e["md5"] is None and e["sha256"] is None:
        raise ManifestError(f"{where}: no plaintext checksum (md5 or sha256) for {rel!r}")
    return e


def _check_unique(entries: list[dict[str, Any]], source: str) -> None:
    ids: dict[str, int] = {}
    names: dict[str, int] = {}
    for e in entries:
        for key, seen in (("file_id", ids), ("file_name", names)):
            if e[key] in seen:
                raise ManifestError(f"{source}:{e['line']}: {key} {e[key]!r} already given on line {seen[e[key]]}")
            seen[e[key]] = e["line"]


def parse_tab(text: str, source: str) -> list[dict[str, Any]]:
    """The seed's tab manifest: ``name<TAB>md5[<TAB>size[<TAB>sha256]]``; ``#`` comments, blank lines."""
    entries = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        where = f"{source}:{lineno}"
        cols = raw.rstrip("\r\n").split("\t")
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
    _check_unique(entries, source)
    return entries


def parse_ega_json(text: str, source: str) -> tuple[str | None, list[dict[str, Any]]]:
    """EGA metadata JSON: a list of file objects; returns (dataset id found in it, entries)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{source}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if isinstance(data, dict):
        data = data.get("files", data.get("response", {}).get("result") if "response" in data else None)
    if not isinstance(data, list):
        raise ManifestError(f"{source}: want a JSON list of file objects")
    entries, datasets = [], set()
    for i, obj in enumerate(data, 1):
        where = f"{source}:item {i}"
        if not isinstance(obj, dict):
            raise ManifestError(f"{where}: not an object")
        for key in ("fileId", "fileName"):
            if not obj.get(key):
                raise ManifestError(f"{where}: missing {key}")
        md5 = obj.get("fileMd5")
        sha = (
            obj.get("unencryptedChecksum")
            if str(obj.get("unencryptedChecksumType", "")).upper() == "SHA256"
            else obj.get("sha256")
        )
        ctype = str(obj.get("checksumType", "MD5")).upper()
        if md5 is None and obj.get("checksum") is not None:
            if ctype == "MD5":
                md5 = obj["checksum"]
            elif ctype == "SHA256" and sha is None:
                sha = obj["checksum"]
            else:
                raise ManifestError(f"{where}: unsupported checksumType {ctype!r}")
        if md5 is None and str(obj.get("unencryptedChecksumType", "MD5")).upper() == "MD5":
            md5 = obj.get("unencryptedChecksum")
        if obj.get("datasetId"):
            datasets.add(str(obj["datasetId"]))
        entries.append(_entry(str(obj["fileId"]), str(obj["fileName"]), md5, sha, obj.get("fileSize"), i, where))
    if len(datasets) > 1:
        raise ManifestError(f"{source}: lists files of several datasets ({', '.join(sorted(datasets))})")
    _check_unique(entries, source)
    return (datasets.pop() if datasets else None), entries


def load(path: Path, dataset_id: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """Read a manifest file (JSON when it starts with '[' or '{', else tab) and decide its dataset id."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read manifest: {exc}") from None
    source = str(path)
    found = None
    if text.lstrip().startswith(("[", "{")):
        found, entries = parse_ega_json(text, source)
    else:
        entries = parse_tab(text, source)
    if dataset_id and found and dataset_id != found:
        raise ManifestError(f"{source}: manifest is for dataset {found}, not {dataset_id}")
    ds = dataset_id or found or path.stem
    if not ds:
        raise ManifestError(f"{source}: cannot tell the dataset id; give --dataset")
    return ds, entries


class ApiError(OSError):
    """The EGA metadata API did not give a usable answer (an I/O error, as requests' own HTTPError is)."""


def fetch_metadata(
    api_url: str,
    dataset_id: str,
    user: str | None,
    password: str | None,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 0.5,
) -> str:
    """GET the dataset's file list from the EGA API (``DATASETID`` in the URL), retrying 5xx and timeouts."""
    url = api_url.replace("DATASETID", dataset_id)
    auth = (user, password) if user is not None and password is not None else None
    last = ""
    for attempt in range(retries + 1):
        try:
            r = requests.get(url, auth=auth, timeout=timeout, headers={"Accept": "application/json"})
        except requests.RequestException as exc:
            last = f"{type(exc).__name__}"
        else:
            if r.status_code == 200:
                text = r.text
                parse_ega_json(text, url)  # refuse garbage before anyone writes it anywhere
                return text
            if r.status_code < 500:
                raise ApiError(f"EGA API {url}: HTTP {r.status_code} {r.reason}")
            last = f"HTTP {r.status_code} {r.reason}"
        if attempt < retries:
            time.sleep(backoff * (2**attempt))
    raise ApiError(f"EGA API {url}: gave up after {retries + 1} attempts, last error: {last}")
