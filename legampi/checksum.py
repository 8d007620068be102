"""Checksums of archived files and their coreutils-format sidecars.

Sidecars are written exactly as `sha256sum`/`md5sum` would, so an operator can verify a folder with
the stock tools (`sha256sum -c *.sha256`) without legampi or its database.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from legampi.archive import write_durably

ALGOS = ("sha256", "md5")
_HEX_LEN = {"sha256": 64, "md5": 32}


def _check_algo(algo: str) -> str:
    if algo not in ALGOS:
        raise ValueError(f"unsupported checksum {algo!r} (expected one of {', '.join(ALGOS)})")
    return algo


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
    if not sep or not name or not all(c in "0123456789abcdefABCDEF" for c in hexdigest):
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


def write_sidecar(path: str | os.PathLike, hexdigest: str, algo: str = "sha256", mode: int = 0o640) -> Path:
    """Write `<path>.<algo>` via temp + rename so readers never see a half-written sidecar."""
    hexdigest = hexdigest.lower()
    if len(hexdigest) != _HEX_LEN[_check_algo(algo)]:
        raise ValueError(f"{hexdigest!r} is not a {algo} hex digest")
    p = Path(path)
    side = sidecar_path(p, algo)
    return write_durably(side, format_line(hexdigest, p.name).encode("utf-8", "surrogateescape"), mode)


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
    text = side.read_bytes().decode("utf-8", "surrogateescape")
    lines = [ln for ln in text.splitlines(keepends=True) if ln.strip()]
    if len(lines) != 1:
        raise ValueError(f"{side}: expected one checksum line, found {len(lines)}")
    expected, name = parse_line(lines[0])
    if len(expected) != _HEX_LEN[algo]:
        raise ValueError(f"{side}: {expected!r} is not a {algo} digest")
    if os.path.basename(name) != name:
        raise ValueError(f"{side}: names {name!r}, expected a bare file name")
    target = side.parent / name
    found = hash_file(target, algo)
    return found == expected, expected, found
