"""Checksums of archived files (also hashed as they are read) and their coreutils-format sidecars.

Sidecars are written exactly as `sha256sum`/`md5sum` would, so an operator can verify a folder with
the stock tools (`sha256sum -c *.sha256`) without legampi or its database.

A sidecar written by the pipeline also carries legampi's *provenance* on a first comment line
(`# legampi-provenance {json}`; coreutils skips lines starting with `#`): the file id, name and
plaintext checksums the archived bytes were made and verified for. It is written durably before the
archived file gets its final name, so an archived copy found without its database row (a crash
between link and commit) is adopted only when this record names that row and the bytes still hash
to the sidecar's checksum. Anything else at an archive path is somebody else's and never adopted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from legampi.archive import write_durably
from legampi.formats import IngestError
from legampi.formats.crypt4gh import Header, read_header

ALGOS = ("sha256", "md5")
HEX_LEN = {"sha256": 64, "md5": 32}
_HEX_DIGITS = frozenset("0123456789abcdef")
PROVENANCE_PREFIX = "# legampi-provenance "
PROVENANCE_KEYS = ("file_id", "file_name", "dataset_id", "md5", "sha256", "plain_size", "archive_key")


def _check_algo(algo: str) -> str:
    if algo not in ALGOS:
        raise ValueError(f"unsupported checksum {algo!r} (expected one of {', '.join(ALGOS)})")
    return algo


def is_hex_digest(text: str, algo: str) -> bool:
    """True if TEXT is a lower-case hex digest of ALGO's length (ValueError for an unknown ALGO)."""
    return len(text) == HEX_LEN[_check_algo(algo)] and _HEX_DIGITS.issuperset(text)


def hash_file(path: str | os.PathLike, algo: str = "sha256", chunk_size: int = 4 << 20) -> str:
    """Hex digest of a file, read in bounded chunks."""
    h = hashlib.new(_check_algo(algo))
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.hexdigest()


class HashingReader(io.RawIOBase):
    """Wraps a binary file so every byte read also feeds a hash (one read serves two checks)."""

    def __init__(self, fh: Any, h: Any) -> None:
        self.fh, self.h, self.count = fh, h, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self.fh.readinto(b)
        if n:
            self.h.update(memoryview(b)[:n])
            self.count += n
        return n or 0


def open_archived(path: Path, secret_key: bytes, key_name: str, algo: str) -> tuple[Any, HashingReader, Header]:
    """Open an archived Crypt4GH copy read-only (no symlinks) and read its header with SECRET_KEY.

    Every byte read is hashed with ALGO (the header included), so the one pass of `rekey` or `export`
    also checks the recorded checksum. Returns (file to close, hashing reader, header); a header that
    does not open is an IngestError naming the file and KEY_NAME.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    src = open(fd, "rb", buffering=0)
    try:
        reader = HashingReader(src, hashlib.new(algo))
        try:
            hdr = read_header(reader, secret_key, str(path))
        except IngestError as exc:
            if exc.kind == "key":
                raise IngestError("key", f"{path}: no header packet opens with {key_name}") from None
            raise
    except BaseException:
        src.close()
        raise
    return src, reader, hdr


def sidecar_path(path: str | os.PathLike, algo: str) -> Path:
    """`<file>.<algo>` next to the file."""
    p = Path(path)
    return p.with_name(p.name + "." + _check_algo(algo))


def format_line(hexdigest: str, name: str) -> str:
    """One coreutils checksum line, escaping names with backslash or newline as coreutils does."""
    if "\\" in name or "\n" in name or "\r" in name:
        escaped = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return f"\\{hexdigest}  {escaped}\n"
    return f"{hexdigest}  {name}\n"


def parse_line(line: str) -> tuple[str, str]:
    """(hexdigest, file name) from one coreutils checksum line."""
    line = line.rstrip("\n")
    escaped = line.startswith("\\")
    if escaped:
        line = line[1:]
    hexdigest, sep, name = line.partition(" ")
    if not sep or not name or not _HEX_DIGITS.issuperset(hexdigest.lower()):
        raise ValueError(f"not a checksum line: {line[:80]!r}")
    if name[0] in " *":  # text (' ') or binary ('*') mode marker
        name = name[1:]
    if escaped:
        out = []
        i = 0
        while i < len(name):
            c = name[i]
            if c == "\\" and i + 1 < len(name):
                nxt = name[i + 1]
                out.append({"\\": "\\", "n": "\n", "r": "\r"}.get(nxt, nxt))
                i += 2
            else:
                out.append(c)
                i += 1
        name = "".join(out)
    return hexdigest.lower(), name


def format_sidecar(hexdigest: str, name: str, algo: str, provenance: dict[str, Any] | None = None) -> bytes:
    """A sidecar's bytes: the optional provenance comment line, then one coreutils checksum line."""
    hexdigest = hexdigest.lower()
    if not is_hex_digest(hexdigest, algo):
        raise ValueError(f"{hexdigest!r} is not a {algo} hex digest")
    head = ""
    if provenance is not None:
        record = {k: provenance.get(k) for k in PROVENANCE_KEYS}
        head = PROVENANCE_PREFIX + json.dumps(record, sort_keys=True, ensure_ascii=True) + "\n"
    return (head + format_line(hexdigest, name)).encode("utf-8", "surrogateescape")


def write_sidecar(
    path: str | os.PathLike,
    hexdigest: str,
    algo: str = "sha256",
    mode: int = 0o640,
    provenance: dict[str, Any] | None = None,
    replace: bool = True,
    sync_dir: bool = True,
) -> Path:
    """Write `<path>.<algo>` via temp + rename so readers never see a half-written sidecar (with
    replace=False never over an existing one: FileExistsError; sync_dir=False: the caller fsyncs the folder)."""
    p = Path(path)
    data = format_sidecar(hexdigest, p.name, algo, provenance)
    return write_durably(sidecar_path(p, algo), data, mode, replace=replace, sync_dir=sync_dir)


def read_sidecar(side: str | os.PathLike, algo: str | None = None) -> tuple[str, str, dict[str, Any] | None]:
    """(hexdigest, file name, provenance or None) of a sidecar; ValueError if it is not a sidecar.

    Bounded: a sidecar is two short lines, so anything over 64 KiB is not one of ours."""
    side = Path(side)
    algo = algo or side.suffix.lstrip(".")
    with open(side, "rb") as fh:
        raw = fh.read(65537)
    if len(raw) > 65536:
        raise ValueError(f"{side}: too large to be a checksum sidecar")
    text = raw.decode("utf-8", "surrogateescape")
    provenance: dict[str, Any] | None = None
    lines = []
    for ln in text.splitlines(keepends=True):
        if ln.startswith(PROVENANCE_PREFIX):
            if provenance is not None:
                raise ValueError(f"{side}: more than one provenance line")
            provenance = _parse_provenance(ln[len(PROVENANCE_PREFIX) :], side)
        elif ln.strip() and not ln.startswith("#"):
            lines.append(ln)
    if len(lines) != 1:
        raise ValueError(f"{side}: expected one checksum line, found {len(lines)}")
    expected, name = parse_line(lines[0])
    if not is_hex_digest(expected, algo):
        raise ValueError(f"{side}: {expected!r} is not a {algo} digest")
    if os.path.basename(name) != name:
        raise ValueError(f"{side}: names {name!r}, expected a bare file name")
    return expected, name, provenance


def _parse_provenance(text: str, side: Path) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except ValueError:
        raise ValueError(f"{side}: unreadable provenance line") from None
    if not isinstance(record, dict) or not isinstance(record.get("file_id"), str):
        raise ValueError(f"{side}: provenance line names no file id")
    return record


def find_sidecar(path: str | os.PathLike) -> tuple[Path, str]:
    """(sidecar, algo) for a data file or a sidecar path."""
    p = Path(path)
    for algo in ALGOS:
        if p.name.endswith("." + algo):
            return p, algo
    for algo in ALGOS:
        side = sidecar_path(p, algo)
        if side.exists():
            return side, algo
    raise FileNotFoundError(f"{p}: no .sha256 or .md5 sidecar found")


def check_sidecar(path: str | os.PathLike) -> tuple[bool, str, str]:
    """Verify a file against its sidecar: (ok, expected, found). `path` is the file or the sidecar."""
    side, algo = find_sidecar(path)
    expected, name, _prov = read_sidecar(side, algo)
    found = hash_file(side.parent / name, algo)
    return found == expected, expected, found


def hashing(chunks: Iterable[Any], hashers: list[Any], count: list[int]) -> Iterator[Any]:
    """Pass CHUNKS on, feeding each to HASHERS and adding its length to count[0]."""
    for chunk in chunks:
        for h in hashers:
            h.update(chunk)
        count[0] += len(chunk)
        yield chunk
