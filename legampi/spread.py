"""One Crypt4GH file's stages on threads of their own, for a worker whose cores would otherwise idle.

The serial pipeline keeps one core busy: read, decrypt, md5 + sha256 of the plaintext, encrypt,
sha256 of the output, write. Spread (`threads_per_file`), batches of whole segments flow through
three stages with bounded hand-offs (POOL buffers per hand-off: memory stays flat for any size):

    caller   read, decrypt, encrypt (per 64 KiB segment)
    hasher   md5 + sha256 of the plaintext (md5 is the serial floor)     one call per batch
    writer   the archive writer: sha256 of the output, write              one call per batch

Only the caller runs Python per segment; the other two take the GIL a few times per batch, so they
do not queue behind each other for it (with 1 ms switch intervals under MPI that queueing cost more
than the threads gave). With two threads the caller also writes. hashlib and os.write release the
GIL on large buffers, but crypt4gh's own `sodium` module holds it for every segment, so the AEAD
calls here go through ctypes to the libsodium functions that module exports (ctypes releases the
GIL during the call): the same ChaCha20-Poly1305 IETF construction and Crypt4GH layout as
`formats.crypt4gh.encrypt_stream`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

from crypt4gh import header as c4gh_header
from crypt4gh import sodium as c4gh_sodium

from legampi.formats import crypt4gh as c4gh
from legampi.formats.base import ByteSource, IngestError, read_exact_into
from legampi.storage import io_error

SEG, CSEG, NONCE = c4gh.SEGMENT_SIZE, c4gh.CIPHER_SEGMENT_SIZE, 12
POOL = 3  # buffers per hand-off (plaintext, sealed): ~7 batches in all (14 MiB at 2 MiB), for any file size
MIN_BATCH = 32  # segments per hand-off at least (2 MiB): fewer GIL hand-overs for the hasher and writer
AUTO_MIN_SIZE = 64 << 20  # threads_per_file = auto: smaller files are over before the threads pay off
_END = None  # the end of a thread's queue


def _load_sodium() -> Any | None:
    """libsodium with its AEAD functions, or None (the caller stays serial)."""
    for path in (c4gh_sodium.__file__, ctypes.util.find_library("sodium")):
        try:
            lib = ctypes.CDLL(path) if path else None
            if lib is None or lib.sodium_init() < 0:
                continue
            enc, dec = lib.crypto_aead_chacha20poly1305_ietf_encrypt, lib.crypto_aead_chacha20poly1305_ietf_decrypt
        except (OSError, AttributeError):
            continue  # not a libsodium with the IETF AEAD: try the next
        p, n = ctypes.c_void_p, ctypes.c_ulonglong
        enc.argtypes = [p, p, p, n, p, n, p, p, ctypes.c_char_p]  # c, clen_p, m, mlen, ad, adlen, nsec, npub, k
        dec.argtypes = [p, p, p, p, n, p, n, p, ctypes.c_char_p]  # m, mlen_p, nsec, c, clen, ad, adlen, npub, k
        lib.randombytes_buf.argtypes = [p, ctypes.c_size_t]
        return lib
    return None


SODIUM = _load_sodium()


def available() -> bool:
    """True when the GIL-free AEAD could be loaded (else `threads_for` always answers 1)."""
    return SODIUM is not None


def usable_cores() -> int:
    """Cores this process may run on (its affinity: a rank bound to one core gets 1)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_for(setting: str, size: int, task: Any = None) -> int:
    """Threads for one file of SIZE bytes under `threads_per_file` SETTING ('1', '2', ... or 'auto').

    auto uses threads only where the worker would otherwise leave cores idle: at least two usable cores
    (its affinity) per worker rank on its node (TASK.node_workers, 0 = unknown: this process alone), or
    rank 0 marked the task `spread` (fewer files left than workers: their cores are about to idle).
    Many files queued on a full node stay serial: every core already has a file of its own."""
    if not available() or size <= SEG:
        return 1
    if setting != "auto":
        return max(1, int(setting))
    cores = usable_cores()
    if cores < 2 or size < AUTO_MIN_SIZE:
        return 1
    # The node's other workers may see the same cores (a Slurm cpuset, no binding): share them out.
    share = cores // max(1, getattr(task, "node_workers", 0))
    return 3 if share >= 2 or getattr(task, "spread", False) else 1


class _Batch:
    """One buffer of whole segments (plaintext, or sealed for the archive) and its address for the C calls."""

    __slots__ = ("addr", "buf", "n", "view")

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.addr = _address(self.buf)
        self.n = 0


def _address(buf: bytearray) -> int:
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


class _Stages:
    """The hasher and writer threads of one file, the buffer pools between them, the first failure."""

    def __init__(
        self,
        source: ByteSource,
        keys: list[bytes],
        hashers: tuple[Any, Any],
        count: list[int],
        writer: Any,
        *,
        threads: int,
        segments: int,
        label: str,
    ) -> None:
        self.source, self.keys, self.hashers, self.count, self.label = source, list(keys), hashers, count, label
        self.writer, self.segment = writer, 0  # index of the next ciphertext segment, for error messages
        self.session_key = os.urandom(32)  # the archive copy's, sealed in its header for the archive key
        self.cbuf = bytearray(segments * CSEG)
        self.caddr = _address(self.cbuf)
        self.plain = _pool(segments * SEG)
        self.sealed = _pool(segments * CSEG)
        self.to_hash: queue.Queue[_Batch | None] = queue.Queue()  # bounded by the pools
        self.to_write: queue.Queue[_Batch | None] = queue.Queue()
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._hash, name="legampi-hash", daemon=True)]
        if threads >= 3:
            self.threads.append(threading.Thread(target=self._write, name="legampi-write", daemon=True))
        for t in self.threads:
            t.start()

    def run(self) -> None:
        """Every batch of the source through the stages; raises the first failure of any thread."""
        eof = False
        while not eof:
            p = self.plain.get()
            eof = self.fill(p)
            if not p.n:
                self.plain.put(p)
                continue
            self.to_hash.put(p)  # hashed while this thread encrypts it (both only read it)
            o = self.sealed.get()
            self.seal(p, o)
            if len(self.threads) > 1:
                self.to_write.put(o)
            else:
                self.write(o)
            if self.error is not None:
                raise self.error
        self.close()
        if self.error is not None:
            raise self.error

    def fill(self, b: _Batch) -> bool:
        """Read and decrypt the next batch into B; True at the end of the source."""
        n = read_exact_into(self.source, self.cbuf)
        eof = n < len(self.cbuf)
        off = b.n = 0
        while off < n:
            seg_len = min(CSEG, n - off)
            if seg_len <= c4gh.CIPHER_DIFF:
                raise IngestError(
                    "truncated",
                    f"{self.label}: last Crypt4GH segment (#{self.segment}) has only {seg_len} bytes, under "
                    "nonce + MAC: the file is truncated",
                )
            self._open(b.addr + b.n, self.caddr + off, seg_len, eof and off + seg_len == n)
            b.n += seg_len - c4gh.CIPHER_DIFF
            off += seg_len
            self.segment += 1
        self.count[0] += b.n
        return eof

    def _open(self, out: int, seg: int, seg_len: int, last: bool) -> None:
        assert SODIUM is not None
        for k, key in enumerate(self.keys):
            if (
                SODIUM.crypto_aead_chacha20poly1305_ietf_decrypt(
                    out, None, None, seg + NONCE, seg_len - NONCE, None, 0, seg, key
                )
                == 0
            ):
                if k:  # keep the key that worked first for the next segments
                    self.keys.insert(0, self.keys.pop(k))
                return
        raise c4gh._segment_failure(self.label, self.segment, seg_len, last)

    def seal(self, p: _Batch, o: _Batch) -> None:
        """Encrypt batch P into O with this file's session key (a random nonce per segment)."""
        assert SODIUM is not None
        o.n = 0
        for pos in range(0, p.n, SEG):
            mlen = min(SEG, p.n - pos)
            SODIUM.randombytes_buf(o.addr + o.n, NONCE)
            SODIUM.crypto_aead_chacha20poly1305_ietf_encrypt(
                o.addr + o.n + NONCE, None, p.addr + pos, mlen, None, 0, None, o.addr + o.n, self.session_key
            )
            o.n += mlen + c4gh.CIPHER_DIFF

    def write(self, o: _Batch) -> None:
        if not self.stop.is_set():
            try:
                self.writer.write(o.view[: o.n])
            except OSError as e:  # as the serial pipeline names it: the kind (nospace, io) and the file
                self.fail(io_error(self.label, "I/O error", e))
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread, which raises it
                self.fail(e)
        self.sealed.put(o)

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.stop.set()

    def _hash(self) -> None:
        while (b := self.to_hash.get()) is not _END:
            if not self.stop.is_set():
                try:
                    for h in self.hashers:
                        h.update(b.view[: b.n])
                except BaseException as e:  # noqa: BLE001 - handed to the caller's thread, which raises it
                    self.fail(e)
            self.plain.put(b)  # back to the caller, hashed or not: it never waits for a dead stage

    def _write(self) -> None:
        while (b := self.to_write.get()) is not _END:
            self.write(b)

    def close(self) -> None:
        """Stop and join the threads (idempotent): nothing of this file runs after it."""
        self.to_hash.put(_END)
        self.to_write.put(_END)
        for t in self.threads:
            t.join()


def _pool(size: int) -> queue.Queue[_Batch]:
    pool: queue.Queue[_Batch] = queue.Queue()
    for _ in range(POOL):
        pool.put(_Batch(size))
    return pool


def for_file(
    source: ByteSource, task: Any, ctx: Any, size: int, hashers: tuple[Any, Any], count: list[int], writer: Any
) -> Iterator[bytes] | None:
    """`reencrypt` for a Crypt4GH source of SIZE bytes when `threads_for` says threads (CTX is stream's
    PipelineContext, TASK its FileTask); None: the serial pipeline (which also reports a missing key)."""
    n = threads_for(ctx.threads_per_file, size, task)
    if n < 2 or ctx.inbox_secret_key is None:
        return None
    key, pk = ctx.inbox_secret_key, ctx.archive_public_key
    return reencrypt(source, key, pk, hashers, count, writer, threads=n, chunk_size=ctx.chunk_size, label=task.rel)


def reencrypt(
    source: ByteSource,
    secret_key: bytes,
    recipient_pk: bytes,
    hashers: tuple[Any, Any],
    count: list[int],
    writer: Any,
    *,
    threads: int = 3,
    chunk_size: int = 4 << 20,
    label: str = "<stream>",
) -> Iterator[bytes]:
    """Write the archived Crypt4GH file for a Crypt4GH SOURCE through WRITER (`write(bytes)`), its stages
    on THREADS threads (2 or 3). HASHERS (md5, sha256) get the plaintext and count[0] its length, as in
    the serial pipeline. A generator that yields nothing: the pipeline's loop drives it, the transfer
    check wraps it, and a failure on any thread is raised from it in the caller's thread (a write error
    as the IngestError the serial pipeline gives), after every thread of the file has stopped."""
    assert SODIUM is not None, "spread.reencrypt without libsodium: threads_for answers 1"
    hdr = c4gh.read_header(source, secret_key, label)
    segments = max(MIN_BATCH, c4gh.segments_per_read(chunk_size))
    stages = _Stages(source, hdr.session_keys, hashers, count, writer, threads=threads, segments=segments, label=label)
    try:
        packet = c4gh_header.make_packet_data_enc(0, stages.session_key)
        try:
            writer.write(c4gh.build_header([packet], recipient_pk))
        except OSError as e:
            raise io_error(label, "I/O error", e) from None
        stages.run()
    finally:
        stages.stop.set()
        stages.close()
    yield from ()
