"""Issue 15: one Crypt4GH file's stages on threads (legampi.spread) give the serial pipeline's result."""

from __future__ import annotations

import errno
import hashlib
import io
import threading
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest

from legampi import archive, checksum, spread
from legampi.formats import crypt4gh as c4gh
from legampi.stream import process_file

SIZES = [0, 1024, c4gh.SEGMENT_SIZE, 3 * 1024 * 1024 + 123, 4 * 1024 * 1024]  # 4 MiB: whole batches only

pytestmark = pytest.mark.skipif(not spread.available(), reason="no libsodium for the GIL-free AEAD")


def _stage_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in ("legampi-hash", "legampi-write")]


def _archive(ws, data_rel: str, plaintexts, h, size: int, threads: str, seed: int = 1):
    src, data = plaintexts.make(size, seed)
    if not ws.source(data_rel).exists():
        h.c4gh_encrypt(src, ws.keys.inbox.pub, ws.source(data_rel))
    result = process_file(h.task_for(data_rel, data), ws.ctx(threads_per_file=threads, chunk_size=1 << 20))
    return result, data


@pytest.mark.parametrize("size", SIZES)
def test_threaded_output_matches_serial(size: int, ws, plaintexts, h) -> None:
    """Same checksums, sizes and plaintext as threads_per_file 1, decryptable by the crypt4gh CLI."""
    seen = {}
    for threads in ("1", "2", "3"):
        rel = f"t/huge{size}.dat.c4gh"
        result, data = _archive(ws, rel, plaintexts, h, size, threads)
        assert result.status == "available", result.error
        assert (result.md5, result.sha256) == (hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest())
        archived = Path(result.archive_path)
        assert hashlib.md5(h.c4gh_decrypt(archived, ws.keys.archive.sec)).hexdigest() == result.md5
        assert checksum.hash_file(archived) == result.archive_checksum
        seen[threads] = (result.md5, result.sha256, result.plain_size, result.archive_size)
        archived.unlink()
        for side in archived.parent.glob(archived.name + ".*"):
            side.unlink()
    assert seen["1"] == seen["2"] == seen["3"]
    assert _stage_threads() == []


def _corrupt(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("threads", ["2", "3"])
@pytest.mark.parametrize(
    "damage,kind",
    [("corrupt", "corrupt"), ("truncate", "truncated"), ("truncate_tiny", "truncated"), ("key", "key")],
)
def test_errors_fail_the_file_and_stop_every_thread(threads, damage, kind, ws, plaintexts, h, keys) -> None:
    src, data = plaintexts.make(5 * 1024 * 1024 + 77, 3)
    rel = "t/bad.dat.c4gh"
    path = h.c4gh_encrypt(src, ws.keys.inbox.pub, ws.source(rel))
    size = path.stat().st_size
    ctx = ws.ctx(threads_per_file=threads, chunk_size=1 << 20)
    if damage == "corrupt":
        _corrupt(path, size - 3 * c4gh.CIPHER_SEGMENT_SIZE)  # a segment in a later batch
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[: size - 1000])
    elif damage == "truncate_tiny":  # the last segment cut to under nonce + MAC
        with path.open("rb") as f:
            head = c4gh.read_header(f, ws.keys.inbox.secret).size
        path.write_bytes(path.read_bytes()[: size - (size - head) % c4gh.CIPHER_SEGMENT_SIZE + 10])
    else:
        ctx = ws.ctx(threads_per_file=threads, inbox_secret_key=keys.archive.secret)
    result = process_file(h.task_for(rel, data), ctx)
    assert result.status == "failed" and result.error_kind == kind, result.error
    assert rel in (result.error or "")
    assert ws.end_files() == []  # no partial archive file, no temp
    assert _stage_threads() == []


@pytest.mark.parametrize("threads", ["2", "3"])
def test_disk_full_fails_the_file(threads, ws, plaintexts, h, monkeypatch) -> None:
    src, data = plaintexts.make(6 * 1024 * 1024, 4)
    rel = "t/full.dat.c4gh"
    h.c4gh_encrypt(src, ws.keys.inbox.pub, ws.source(rel))
    real = archive.TempArchiveFile.write
    calls = [0]

    def full(self, block) -> None:
        calls[0] += 1
        if calls[0] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, block)

    monkeypatch.setattr(archive.TempArchiveFile, "write", full)
    result = process_file(h.task_for(rel, data), ws.ctx(threads_per_file=threads, chunk_size=1 << 20))
    assert result.status == "failed" and result.error_kind == "nospace", result.error
    assert ws.end_files() == [] and _stage_threads() == []


def _stream(plaintexts, h, ws, size: int) -> tuple[io.BytesIO, bytes]:
    src, data = plaintexts.make(size, 5)
    enc = h.c4gh_encrypt(src, ws.keys.inbox.pub, ws.root / "s.c4gh")
    return io.BytesIO(enc.read_bytes()), data


class Sink:
    """An archive writer that keeps only the hash and size of what it is given."""

    def __init__(self) -> None:
        self.h, self.size = hashlib.sha256(), 0

    def write(self, data) -> None:
        self.h.update(data)
        self.size += len(data)


@pytest.mark.parametrize("threads", [2, 3])
def test_hashing_error_is_raised_in_the_caller(threads, ws, plaintexts, h) -> None:
    source, _data = _stream(plaintexts, h, ws, 3 << 20)

    class Broken:
        def update(self, _chunk) -> None:
            raise MemoryError("hash state lost")

    out = spread.reencrypt(
        source, ws.keys.inbox.secret, ws.keys.archive.public, (Broken(), hashlib.sha256()), [0], Sink(), threads=threads
    )
    with pytest.raises(MemoryError):
        list(out)
    assert _stage_threads() == []


def test_memory_is_flat_whatever_the_file_size(ws, plaintexts, h) -> None:
    """POOL plaintext and POOL sealed batches plus one read buffer, however many batches the file has."""
    peaks = []
    batch = spread.MIN_BATCH * c4gh.CIPHER_SEGMENT_SIZE
    for size in (8 << 20, 40 << 20):
        source, data = _stream(plaintexts, h, ws, size)
        md5, count, sink = hashlib.md5(), [0], Sink()
        tracemalloc.start()
        try:
            list(
                spread.reencrypt(
                    source,
                    ws.keys.inbox.secret,
                    ws.keys.archive.public,
                    (md5, hashlib.sha256()),
                    count,
                    sink,
                    chunk_size=1 << 20,
                )
            )
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert md5.hexdigest() == hashlib.md5(data).hexdigest() and count[0] == size
        segments = -(-size // c4gh.SEGMENT_SIZE)
        assert sink.size - size - segments * c4gh.CIPHER_DIFF in range(100, 200)  # the header's bytes
    assert peaks[1] < (2 * spread.POOL + 2) * batch and peaks[1] < peaks[0] * 1.2, peaks


def test_auto_uses_threads_only_where_cores_would_idle(monkeypatch) -> None:
    monkeypatch.setattr(spread, "usable_cores", lambda: 2)
    huge = 1 << 30

    def task(node_workers: int, spread_: bool = False) -> SimpleNamespace:
        return SimpleNamespace(node_workers=node_workers, spread=spread_)

    assert spread.threads_for("auto", huge, task(1)) == 3  # mpiexec -n 2: one worker, two cores
    assert spread.threads_for("auto", huge, None) == 3  # one rank, no MPI
    assert spread.threads_for("auto", huge, task(2)) == 1  # a full node with files queued: serial
    assert spread.threads_for("auto", huge, task(2, spread_=True)) == 3  # the last files: others idle
    assert spread.threads_for("auto", 1 << 20, task(1)) == 1  # too small to pay for threads
    assert spread.threads_for("1", huge, task(1)) == 1 and spread.threads_for("2", 1 << 20, task(2)) == 2
    monkeypatch.setattr(spread, "usable_cores", lambda: 1)  # the launcher pinned the rank to one core
    assert spread.threads_for("auto", huge, task(1, spread_=True)) == 1
    monkeypatch.setattr(spread, "usable_cores", lambda: 8)  # 8 cores, 4 workers: 2 each
    assert spread.threads_for("auto", huge, task(4)) == 3 and spread.threads_for("auto", huge, task(8)) == 1


def test_rank0_marks_the_last_files_spread_and_counts_workers_per_node() -> None:
    from legampi.dispatch import TASKS, Dispatch
    from legampi.stream import FileTask

    class Team:  # what Dispatch uses of parallel.Team: sends, the size, every rank's host
        MPI = comm = bell = None

        def __init__(self) -> None:
            self.size, self.hosts, self.sent = 4, {0: "a", 1: "a", 2: "a", 3: "b"}, []

        def send(self, obj, dest: int, tag: int) -> None:
            self.sent.append((dest, tag, obj))

    tasks = [FileTask(f"F{i}", "D", f"f{i}.c4gh", None, None, size=100 << 20) for i in range(7)]
    team = Team()
    Dispatch(team, tasks, "dynamic", key=lambda t: t.size, name=lambda t: t.rel)
    dealt = [(dest, t) for dest, tag, batch in team.sent if tag == TASKS for t in batch]
    # dealt round-robin (one message per worker): f0-f2, then f3-f5; f6 waits. A file is marked spread
    # when fewer than 3 (the workers) are left after taking it: f4 (2 left) and f5 (1 left)
    assert sorted(t.rel for _w, t in dealt) == [f"f{i}.c4gh" for i in range(6)]
    assert sorted(t.rel for _w, t in dealt if t.spread) == ["f4.c4gh", "f5.c4gh"]
    assert {w: t.node_workers for w, t in dealt} == {1: 2, 2: 2, 3: 1}


@pytest.mark.parametrize("right", [True, False])
def test_transfer_checksum_is_checked_on_the_reader_thread(right: bool, ws, plaintexts, h) -> None:
    import dataclasses

    src, data = plaintexts.make(3 << 20, 6)
    rel = "t/sent.dat.c4gh"
    enc = h.c4gh_encrypt(src, ws.keys.inbox.pub, ws.source(rel))
    digest = hashlib.sha256(enc.read_bytes() if right else b"other").hexdigest()
    task = dataclasses.replace(h.task_for(rel, data), transfer_checksum=digest, transfer_checksum_type="sha256")
    result = process_file(task, ws.ctx(threads_per_file="3", chunk_size=1 << 20))
    if right:
        assert result.status == "available", result.error
    else:
        assert result.status == "failed" and result.error_kind == "transfer_corrupt", result.error
        assert ws.end_files() == []
    assert _stage_threads() == []
