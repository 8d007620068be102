"""The three non-legampi contenders and the schedules they use.

Each contender gets the same encrypted inputs, the same worker count W and a fresh output
folder, and returns a ``ContenderRun`` whose per-file outcomes the harness verifies, so a
contender that skips work cannot look fast. All use the crypt4gh package's ciphers, so the
comparison is about structure (extra passes, disk round trips, process startup,
scheduling), not about crypto implementations.
"""

from __future__ import annotations

import hashlib
import heapq
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from crypt4gh import header, lib, sodium
from datagen import CIPHER_SEGMENT, SEGMENT, DataFile, KeySet

SEED_CHUNK = 16384  # the seed's config chunk_size for md5.py
READ_SEGMENTS = 16  # ideal reads 16 cipher segments (1,049,024 bytes) at a time


@dataclass
class FileOutcome:
    """What a contender says it did with one file; verified afterwards by the harness."""

    name: str
    output: str | None = None
    md5: str | None = None  # plaintext md5 the contender computed
    sha256: str | None = None  # plaintext sha256 (None if the contender does not compute it)
    out_sha256: str | None = None  # sha256 of the archived bytes, as the contender computed it
    out_md5: str | None = None  # md5 of the archived bytes (the seed's checksum)
    seconds: float = 0.0
    worker: int | None = None
    error: str | None = None


@dataclass
class ContenderRun:
    """One contender's run over all files: wall time plus per-file outcomes."""

    contender: str
    mode: str
    schedule: str
    workers: int
    wall: float = 0.0
    outcomes: list[FileOutcome] = field(default_factory=list)
    status: str = "ok"  # ok | error | skipped | verify-failed
    error: str | None = None
    notes: str = ""
    walls: list[float] = field(default_factory=list)  # every repetition; ``wall`` is their median

    def to_dict(self) -> dict:
        d = asdict(self)
        d["outcomes"] = [asdict(o) for o in self.outcomes]
        return d


# --------------------------------------------------------------------------- schedules


def static_branches(names: Sequence[str], workers: int) -> dict[int, list[str]]:
    """The seed's split: file number ``branch + branches*n`` (1-based, sorted listing) goes to ``branch``."""
    listing = sorted(names)
    return {b: [listing[i - 1] for i in range(b, len(listing) + 1, workers)] for b in range(1, workers + 1)}


def static_makespan(sizes_in_listing_order: Sequence[float], workers: int) -> float:
    """Finish time of the busiest branch under the seed's static round-robin split."""
    loads = [0.0] * workers
    for i, s in enumerate(sizes_in_listing_order):
        loads[i % workers] += s
    return max(loads) if loads else 0.0


def greedy_makespan(sizes: Sequence[float], workers: int) -> float:
    """Dynamic list scheduling: the next file goes to whichever worker frees up first."""
    heap = [0.0] * workers
    for s in sizes:
        heapq.heapreplace(heap, heap[0] + s)
    return max(heap) if heap else 0.0


def lpt_makespan(sizes: Sequence[float], workers: int) -> float:
    """Dynamic largest-first (LPT): within 4/3 of optimal (Graham 1969)."""
    return greedy_makespan(sorted(sizes, reverse=True), workers)


def lower_bound(sizes: Sequence[float], workers: int) -> float:
    """No schedule beats the mean load per worker or the largest single file."""
    return max(sum(sizes) / workers, max(sizes, default=0.0))


# --------------------------------------------------------------------------- process pools

_KEYS: dict[str, bytes] = {}


def _init_keys(inbox_sk: bytes, archive_pk: bytes) -> None:
    _KEYS["inbox_sk"], _KEYS["archive_pk"] = inbox_sk, archive_pk


def _guard(func: Callable[[tuple], FileOutcome], job: tuple) -> FileOutcome:
    """Run one file; a failure becomes that file's error (reported and failing verification)."""
    t0 = time.perf_counter()
    try:
        out = func(job)
    except (OSError, ValueError, AssertionError, RuntimeError) as exc:  # reported per file, never dropped
        out = FileOutcome(name=job[0], error=f"{job[1]}: {type(exc).__name__}: {exc}")
    out.seconds = time.perf_counter() - t0
    out.worker = os.getpid()
    return out


def _branch(args: tuple[Callable[[tuple], FileOutcome], list[tuple]]) -> list[FileOutcome]:
    func, jobs = args
    return [_guard(func, j) for j in jobs]


def _one(args: tuple[Callable[[tuple], FileOutcome], tuple]) -> FileOutcome:
    func, job = args
    return _guard(func, job)


def _run_pool(
    func: Callable[[tuple], FileOutcome], jobs: list[tuple], workers: int, schedule: str, keys: KeySet
) -> tuple[float, list[FileOutcome]]:
    """Run jobs (first element: file name) on W forked processes with a static or largest-first schedule."""
    ctx = multiprocessing.get_context("fork")
    initargs = (keys.inbox_secret(), keys.archive_public())
    by_name = {j[0]: j for j in jobs}
    t0 = time.perf_counter()
    with ctx.Pool(workers, initializer=_init_keys, initargs=initargs) as pool:
        if schedule == "static":
            branches = static_branches(list(by_name), workers)
            parts = pool.map(
                _branch, [(func, [by_name[n] for n in branches[b]]) for b in sorted(branches)], chunksize=1
            )
            outcomes = [o for part in parts for o in part]
        elif schedule == "lpt":
            order = sorted(jobs, key=lambda j: j[-1], reverse=True)  # last element: size
            outcomes = list(pool.imap_unordered(_one, [(func, j) for j in order], chunksize=1))
        else:
            raise ValueError(f"unknown schedule {schedule!r} (static or lpt)")
    return time.perf_counter() - t0, outcomes


# --------------------------------------------------------------------------- seed method


def _md5_of(path: str) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(SEED_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _seed_one(job: tuple) -> FileOutcome:
    name, src, scratch, archive, expected_md5, _size = job
    plain = os.path.join(scratch, name[: -len(".c4gh")] if name.endswith(".c4gh") else name + ".plain")
    enc = os.path.join(scratch, name + ".tmp")
    with open(src, "rb") as fi, open(plain, "wb") as fo:  # 1. decrypt to disk
        lib.decrypt([(0, _KEYS["inbox_sk"], None)], fi, fo)
    md5 = _md5_of(plain)  # 2. read plaintext for md5
    if md5 != expected_md5:
        os.remove(plain)
        raise ValueError(f"plaintext md5 {md5} differs from the manifest {expected_md5}")
    with open(plain, "rb") as fi, open(enc, "wb") as fo:  # 3. encrypt to disk
        lib.encrypt([(0, os.urandom(32), _KEYS["archive_pk"])], fi, fo)
    os.remove(plain)
    enc_md5 = _md5_of(enc)  # 4. read ciphertext for md5
    with open(enc + ".md5", "w") as f:
        f.write(enc_md5)
    dst = os.path.join(archive, name)
    shutil.move(enc, dst)  # 5. move into the archive
    shutil.move(enc + ".md5", dst + ".md5")
    return FileOutcome(name=name, output=dst, md5=md5, out_md5=enc_md5)


def seed_method(files: list[DataFile], archive: Path, scratch: Path, keys: KeySet, workers: int) -> ContenderRun:
    """The seed's sequence: decrypt to a plaintext file, md5 it, encrypt to a file, md5 that, move.

    W processes, files split round-robin over the sorted listing (``branch + branches*n``),
    as the seed's FilesInDirectory did. Like the seed it never fsyncs, and it writes the
    plaintext to disk (``scratch``), which legampi must never do: it is only here as a baseline.
    """
    archive.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    jobs = [(d.name, d.path, str(scratch), str(archive), d.md5, d.size) for d in files]
    wall, outcomes = _run_pool(_seed_one, jobs, workers, "static", keys)
    return ContenderRun(
        "seed",
        "full",
        "static",
        workers,
        wall,
        outcomes,
        notes="decrypt->disk, md5, encrypt->disk, md5, move; no fsync",
    )


# --------------------------------------------------------------------------- command-line pipeline

# The operator's one-liner is  crypt4gh decrypt | tee >(md5sum) >(sha256sum) | crypt4gh encrypt.
# Process substitutions started inside a pipeline cannot be waited for (they are children of
# tee's subshell), so the sums could be read before they are written; opening them on fds 3/4
# in the main shell keeps the same dataflow and lets the script wait for them.
CLI_SCRIPT = r"""
set -euo pipefail
in=$1; out=$2; sk=$3; pk=$4; tmp=$5; c4gh=$6
exec 3> >(md5sum > "$tmp/md5"); m=$!
exec 4> >(sha256sum > "$tmp/sha256"); s=$!
"$c4gh" decrypt --sk "$sk" < "$in" | tee /dev/fd/3 /dev/fd/4 | "$c4gh" encrypt --recipient_pk "$pk" > "$out"
exec 3>&- 4>&-
wait "$m"; wait "$s"
sha256sum "$out" > "$out.sha256"
"""


def crypt4gh_command() -> str:
    """The crypt4gh CLI next to this Python (the venv's), else the one on PATH."""
    here = Path(sys.executable).parent / "crypt4gh"
    found = str(here) if here.exists() else shutil.which("crypt4gh")
    if not found:
        raise FileNotFoundError("crypt4gh command not found next to the Python interpreter or on PATH")
    return found


def _cli_one(job: tuple, archive: Path, scratch: Path, keys: KeySet, c4gh: str, env: dict) -> FileOutcome:
    name, src = job
    t0 = time.perf_counter()
    dst = archive / name
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        proc = subprocess.run(
            ["bash", "-c", CLI_SCRIPT, "cli", src, str(dst), keys.inbox_sk, keys.archive_pk, tmp, c4gh],
            check=False,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            return FileOutcome(
                name=name,
                error=f"{src}: pipeline exit {proc.returncode}: {proc.stderr.strip()[-400:]}",
                seconds=time.perf_counter() - t0,
            )
        md5 = Path(tmp, "md5").read_text().split()[0]
        sha = Path(tmp, "sha256").read_text().split()[0]
    out_sha = Path(str(dst) + ".sha256").read_text().split()[0]
    return FileOutcome(
        name=name, output=str(dst), md5=md5, sha256=sha, out_sha256=out_sha, seconds=time.perf_counter() - t0
    )


def cli_pipeline(files: list[DataFile], archive: Path, scratch: Path, keys: KeySet, workers: int) -> ContenderRun:
    """What an operator would script: a bash pipeline per file, W at a time in listing order (xargs -P W)."""
    archive.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    c4gh = crypt4gh_command()
    env = dict(os.environ, C4GH_PASSPHRASE="")
    env.pop("C4GH_SECRET_KEY", None)
    jobs = [(d.name, d.path) for d in sorted(files, key=lambda d: d.name)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(lambda j: _cli_one(j, archive, scratch, keys, c4gh, env), jobs))
    wall = time.perf_counter() - t0
    return ContenderRun(
        "cli",
        "full",
        "listing",
        workers,
        wall,
        outcomes,
        notes="bash: crypt4gh decrypt | tee md5sum sha256sum | crypt4gh encrypt; sha256sum out",
    )


# --------------------------------------------------------------------------- ideal script


def _read_full(f, buf: bytearray) -> int:
    """Fill ``buf`` unless EOF comes first, so segment boundaries stay aligned."""
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _ideal_one(job: tuple) -> FileOutcome:
    name, src, dst, mode, _size = job
    md5, psha, osha = hashlib.md5(), hashlib.sha256(), hashlib.sha256()
    with open(src, "rb", buffering=0) as f:
        decrypted, _ignored = header.decrypt(list(header.parse(f)), [(0, _KEYS["inbox_sk"], None)])
        if not decrypted:
            raise ValueError("no header packet decrypts with the inbox key")
        data_packets, edit_list = header.partition_packets(decrypted)
        if edit_list is not None or len(data_packets) != 1:
            raise ValueError("expected exactly one data key and no edit list")
        key = header.parse_enc_packet(data_packets[0])
        recipients = [(0, os.urandom(32), _KEYS["archive_pk"])]
        if mode == "full":
            new_key = os.urandom(32)
            head = header.serialize(header.encrypt(header.make_packet_data_enc(0, new_key), recipients))
        elif mode == "header":
            head = header.serialize([e for p in decrypted for e in header.encrypt(p, recipients)])
        else:
            raise ValueError(f"unknown mode {mode!r} (full or header)")
        inbuf = bytearray(READ_SEGMENTS * CIPHER_SEGMENT)
        outbuf = bytearray(READ_SEGMENTS * CIPHER_SEGMENT)
        plain = bytearray(SEGMENT)
        inview, outview, pview = memoryview(inbuf), memoryview(outbuf), memoryview(plain)
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            _write_all(fd, memoryview(head))
            osha.update(head)
            while True:
                n = _read_full(f, inbuf)
                if n == 0:
                    break
                o = 0
                for off in range(0, n, CIPHER_SEGMENT):
                    seg = inview[off : min(off + CIPHER_SEGMENT, n)]
                    if len(seg) <= 28:
                        raise ValueError(f"truncated final segment ({len(seg)} bytes)")
                    p = sodium.chacha20poly1305_decrypt(plain, seg, key)
                    md5.update(pview[:p])
                    psha.update(pview[:p])
                    if mode == "full":
                        o += sodium.chacha20poly1305_encrypt(outview[o : o + CIPHER_SEGMENT], pview[:p], new_key)
                chunk = outview[:o] if mode == "full" else inview[:n]
                osha.update(chunk)
                _write_all(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
    return FileOutcome(name=name, output=dst, md5=md5.hexdigest(), sha256=psha.hexdigest(), out_sha256=osha.hexdigest())


def ideal(
    files: list[DataFile],
    archive: Path,
    keys: KeySet,
    workers: int,
    mode: str = "full",
    schedule: str = "lpt",
) -> ContenderRun:
    """Only the unavoidable work: one pass read->decrypt->md5+sha256->encrypt (or copy)->sha256->write, fsync.

    W plain processes, no MPI, no database; largest-first dispatch by default (``schedule='static'``
    reproduces the seed's round-robin split, to measure imbalance for real).
    """
    archive.mkdir(parents=True, exist_ok=True)
    jobs = [(d.name, d.path, str(archive / d.name), mode, d.size) for d in files]
    wall, outcomes = _run_pool(_ideal_one, jobs, workers, schedule, keys)
    return ContenderRun(
        "ideal", mode, schedule, workers, wall, outcomes, notes="one pass, 16-segment reads, fsync once"
    )
