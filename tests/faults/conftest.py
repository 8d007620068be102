"""Helpers for the fault-injection suite: run real jobs, find their ranks, hurt them, check the guarantees.

The guarantees every test checks with `assert_safe`: no registered file is lost (its source is still in
processing, or it is archived and recorded), nothing unverified sits in end_storage (no temp file, every
archived file has a matching sidecar and decrypts with the archive key to the original plaintext), and a
source is gone only once its archived copy is recorded. Synchronisation polls a condition with a deadline.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from legampi import archive, checksum
from legampi.config import DatabaseConfig
from legampi.db import Database
from tests.conftest import BIN, LEGAMPI, MPIEXEC, Workspace

C4GH = str(BIN / "crypt4gh")
T = TypeVar("T")


# ---------------------------------------------------------------------- waiting
def poll(cond: Callable[[], T], what: str, timeout: float = 60.0, interval: float = 0.003) -> T:
    """Return cond()'s first truthy value; fail naming WHAT if none comes within TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------- config and registration
def set_options(ws: Workspace, **sections: dict[str, Any]) -> None:
    """Change options of the workspace's INI, e.g. set_options(ws, func_conf={"batch_size": 1000})."""
    p = configparser.ConfigParser(interpolation=None)
    p.read(ws.config, encoding="utf-8")
    for section, values in sections.items():
        if not p.has_section(section):
            p.add_section(section)
        for k, v in values.items():
            if v is None:
                p.remove_option(section, k)
            else:
                p.set(section, k, str(v))
    with open(ws.config, "w", encoding="utf-8") as fh:
        p.write(fh)


def register(ws: Workspace, dataset: str, entries: list[dict[str, Any]]) -> None:
    ws.manifest(dataset, entries, sha256=True)
    ws.legampi("register", str(ws.metadata / f"{dataset}.tab"))


def add_files(
    ws: Workspace, prefix: str, n: int, size: int, dataset: str = "DS1", block: bytes | None = None
) -> list[dict[str, Any]]:
    """N Crypt4GH files of SIZE plaintext bytes in processing, registered in DATASET.

    With BLOCK the plaintext is BLOCK repeated (cheap big files), made unique per file by a prefix.
    """
    out = []
    for i in range(n):
        data = None
        if block is not None:
            head = f"{prefix}-{i}-".encode().ljust(64, b".")
            data = head + block * ((size - len(head)) // len(block) + 1)
            data = data[:size]
        out.append(ws.add_file(f"{prefix}{i:02d}.bam.c4gh", size, data=data))
    register(ws, dataset, out)
    return out


# ---------------------------------------------------------------------- database views
def connect(ws: Workspace) -> Database:
    return Database.connect(DatabaseConfig(url=ws.db_url))


def rows_by_name(ws: Workspace) -> dict[str, dict[str, Any]]:
    db = connect(ws)
    try:
        return {r["file_name"]: r for r in db.files()}
    finally:
        db.close()


def status_json(ws: Workspace) -> dict[str, Any]:
    return json.loads(ws.legampi("status", "--json").stdout)


def events(ws: Workspace, event: str | None = None) -> list[dict[str, Any]]:
    db = connect(ws)
    try:
        return db.events(event=event)
    finally:
        db.close()


def dump_db(ws: Workspace) -> str:
    """Every row of every table as text (to grep for secrets)."""
    db = connect(ws)
    try:
        if db.backend == "sqlite":
            tables = [r["name"] for r in db.query("SELECT name FROM sqlite_master WHERE type = 'table'")]
        else:
            tables = [
                r["table_name"]
                for r in db.query(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
                )
            ]
        lines = []
        for t in tables:
            for r in db.query(f'SELECT * FROM "{t}"'):
                lines.append(f"{t}: {r!r}")
        assert tables, "no tables found to dump"
        return "\n".join(lines)
    finally:
        db.close()


# ---------------------------------------------------------------------- disk views
def all_files(root: Path) -> Iterator[Path]:
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            yield Path(dirpath) / n


def temp_files(ws: Workspace) -> list[Path]:
    return [p for p in all_files(ws.end_storage) if archive.is_temp_name(p.name)]


def archived_files(ws: Workspace) -> list[Path]:
    """Final archived data files (no temps, no sidecars)."""
    return [p for p in all_files(ws.end_storage) if p.name.endswith(".c4gh") and not archive.is_temp_name(p.name)]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def decrypt_sha256(ws: Workspace, path: Path) -> str:
    """sha256 of what `crypt4gh decrypt --sk ARCHIVE_SECRET` makes of PATH (streamed, never on disk)."""
    h = hashlib.sha256()
    with open(path, "rb") as fin:
        p = subprocess.Popen(
            [C4GH, "decrypt", "--sk", str(ws.archive_sk)], stdin=fin, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert p.stdout is not None
        for chunk in iter(lambda: p.stdout.read(1 << 20), b""):  # type: ignore[union-attr]
            h.update(chunk)
        err = p.stderr.read() if p.stderr else b""
        rc = p.wait()
    assert rc == 0, f"crypt4gh decrypt of {path} failed ({rc}): {err.decode(errors='replace')}"
    return h.hexdigest()


def assert_safe(ws: Workspace, entries: list[dict[str, Any]], complete: bool = False) -> dict[str, Any]:
    """The suite's guarantees; with COMPLETE also: every file available, every source removed, and
    every archived file in end_storage recorded. Returns the rows by name."""
    rows = rows_by_name(ws)
    temps = temp_files(ws)
    assert not temps, f"temporary files left in end_storage: {temps}"
    recorded = set()
    for e in entries:
        name = e["name"]
        r = rows.get(name)
        assert r is not None, f"{name}: registered file has no row"
        src = ws.processing / name
        if r["status"] == "available":
            final = Path(r["archive_path"])
            assert final.is_file(), f"{name}: recorded available but {final} is missing"
            assert final == archive.final_path(ws.end_storage, name, (".c4gh", ".cip", ".gpg")).absolute()
            side = checksum.sidecar_path(final, r["archive_checksum_type"])
            ok, expected, found = checksum.check_sidecar(side)
            assert ok, f"{name}: sidecar {side} says {expected}, file hashes to {found}"
            assert found == r["archive_checksum"], f"{name}: row checksum differs from the archived bytes"
            assert decrypt_sha256(ws, final) == e["sha256"], f"{name}: archived copy does not decrypt to the input"
            recorded.add(final.absolute())
        else:
            assert src.is_file(), f"{name}: LOST: status {r['status']}, source gone, nothing recorded"
        if complete:
            assert r["status"] == "available", f"{name}: status {r['status']} after the rerun ({r['error']})"
            assert not src.exists(), f"{name}: source still in processing after being recorded"
    if complete:
        extra = [p for p in archived_files(ws) if p.absolute() not in recorded]
        assert not extra, f"archived but not recorded: {extra}"
    return rows


# ---------------------------------------------------------------------- processes
def start_mpi(ws: Workspace, n: int, *args: str, tag: str = "job") -> subprocess.Popen[str]:
    """Start `mpiexec -n N legampi -c CONFIG ARGS` in the background; output goes to files under root."""
    logs = ws.root / "logs"
    logs.mkdir(exist_ok=True)
    out = open(logs / f"{tag}.out", "w")  # closed by finish()
    err = open(logs / f"{tag}.err", "w")
    cmd = [MPIEXEC, "-n", str(n), LEGAMPI, "-c", str(ws.config), *args] if n else [LEGAMPI, "-c", str(ws.config), *args]
    p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ws.root)
    p._legampi_logs = (logs / f"{tag}.out", logs / f"{tag}.err", out, err)  # type: ignore[attr-defined]
    return p


def finish(p: subprocess.Popen[str], timeout: float = 120.0) -> tuple[int, str, str]:
    """Wait for a job started by start_mpi; returns (exit status, stdout, stderr)."""
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise AssertionError(f"job did not end within {timeout}s") from None
    out_path, err_path, out, err = p._legampi_logs  # type: ignore[attr-defined]
    out.close()
    err.close()
    return rc, out_path.read_text(), err_path.read_text()


def children(pid: int) -> list[int]:
    """All descendants of PID (from /proc)."""
    by_parent: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        by_parent.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in by_parent.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def rank_pids(p: subprocess.Popen[str]) -> dict[int, int]:
    """rank -> pid of the legampi processes started by this mpiexec (PMI_RANK from /proc/PID/environ)."""
    out = {}
    for pid in children(p.pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if not any(c.endswith(b"legampi") for c in cmd[:2]) or b"process" not in cmd:
            continue
        for kv in env:
            if kv.startswith(b"PMI_RANK="):
                out[int(kv.split(b"=", 1)[1])] = pid
    return out


def stopped(pid: int) -> bool:
    """Has every thread of PID stopped (SIGSTOP)? A worker has a second thread committing files, and
    kill() returns before the signal has reached either."""
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        except OSError:
            continue  # that thread has just ended
    return all(s in ("T", "t") for s in states)


def freeze(pids: Iterable[int]) -> None:
    """SIGSTOP every process in PIDS and return once all their threads are really stopped."""
    pids = list(pids)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    poll(lambda: all(stopped(pid) for pid in pids), "the ranks to stop")


def wait_ranks(p: subprocess.Popen[str], n: int) -> dict[int, int]:
    return poll(lambda: (lambda r: r if len(r) == n else None)(rank_pids(p)), f"{n} ranks to start")


def open_sources(pid: int, processing: Path) -> set[str]:
    """Files under PROCESSING that process PID has open (the file it is streaming)."""
    out = set()
    root = str(processing.resolve()) + "/"
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(root):
            out.add(target[len(root) :])
    return out


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    os.kill(pid, sig)


def tcp_ports_of(pid: int) -> set[int]:
    """Local TCP ports of PID's sockets (to find its PostgreSQL backends in pg_stat_activity)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            t = os.readlink(fd)
        except OSError:
            continue
        if t.startswith("socket:["):
            inodes.add(t[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[9] in inodes:
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tree_snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """name -> (size, mtime_ns, sha256) of every file under ROOT (to prove nothing was touched)."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns, sha256_file(p))
        for p in all_files(root)
    }


PG_ONLY = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
