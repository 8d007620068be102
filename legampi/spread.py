"""One Crypt4GH file's stages on threads of their own, for a worker whose cores would otherwise idle.

The serial pipeline keeps one core busy: read, decrypt, md5 + sha256 of the plaintext, encrypt,
sha256 of the output, write. Spread over threads (`threads_per_file`), batches of whole segments flow
through three stages with bounded hand-offs:

    reader   read + decrypt a batch, sha256 of the plaintext  ─┐ (a pool of POOL batch buffers:
    md5      md5 of the plaintext (the serial floor)           │  memory stays flat whatever the
    caller   encrypt, then the archive writer hashes + writes ─┘  file size)

hashlib releases the GIL on large buffers, but crypt4gh's own `sodium` module holds it for every
segment, so threads would just take turns. The AEAD calls here go through ctypes to the libsodium
functions that module exports (ctypes releases the GIL during the call): the same ChaCha20-Poly1305
IETF construction, so the output is a Crypt4GH file like `formats.crypt4gh.encrypt_stream`'s.
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

SEG, CSEG, NONCE = c4gh.SEGMENT_SIZE, c4gh.CIPHER_SEGMENT_SIZE, 12
POOL = 4  # plaintext batches in flight: memory is POOL + 2 batches (~6 chunk_size) for any file size
MIN_BATCH = 16  # segments per hand-off at least (1 MiB): per-batch queue costs vanish against the crypto
AUTO_MIN_SIZE = 64 << 20  # threads_per_file = auto: smaller files are over before the threads pay off
_END = None  # the end of a stage's stream (the reader also ends it after a failure)


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

    auto uses threads only where the worker would otherwise leave cores idle: its node has at least two
    usable cores per worker rank (TASK.node_workers, 0 = unknown: this process alone), or rank 0 marked
    the task `spread` (fewer files left than workers: the other workers' cores are about to idle). Many
    files queued on a full node stay serial: every core already has a file of its own."""
    if not available() or size <= SEG:
        return 1
    if setting != "auto":
        return max(1, int(setting))
    cores = usable_cores()
    if cores < 2 or size < AUTO_MIN_SIZE:
        return 1
    bound = cores < (os.cpu_count() or cores)  # the launcher pinned this rank: its cores are its own
    share = cores if bound else cores // max(1, getattr(task, "node_workers", 0))
    return 3 if share >= 2 or getattr(task, "spread", False) else 1


class _Batch:
    """One plaintext buffer of whole segments and its address for the C calls."""

    __slots__ = ("addr", "buf", "n", "view")

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.addr = _address(self.buf)
        self.n = 0


def _address(buf: bytearray) -> int:
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


class _Stages:
    """The reader and md5 threads of one file, the queues between them, and the first failure."""

    def __init__(
        self,
        source: ByteSource,
        keys: list[bytes],
        hashers: tuple[Any, Any],
        count: list[int],
        *,
        threads: int,
        segments: int,
        label: str,
    ) -> None:
        self.source, self.keys, self.count, self.label = source, list(keys), count, label
        self.md5, self.sha = hashers
        self.cbuf = bytearray(segments * CSEG)
        self.caddr = _address(self.cbuf)
        self.pool: queue.Queue[_Batch | None] = queue.Queue()
        for _ in range(POOL):
            self.pool.put(_Batch(segments * SEG))
        self.to_md5: queue.Queue[_Batch | None] = queue.Queue()  # bounded by the pool, as is to_caller
        self.to_caller: queue.Queue[_Batch | None] = queue.Queue()
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.eof = self.ended = False
        self.segment = 0  # index of the next ciphertext segment, for error messages
        self.inline = threads < 3  # two threads: the caller reads and decrypts too
        self.threads = [threading.Thread(target=self._hash, name="legampi-md5", daemon=True)]
        if not self.inline:
            self.threads.append(threading.Thread(target=self._read, name="legampi-read", daemon=True))
        for t in self.threads:
            t.start()

    def fill(self, b: _Batch) -> None:
        """Read and decrypt the next batch into B (sets eof at the end of the source)."""
        n = read_exact_into(self.source, self.cbuf)
        self.eof = n < len(self.cbuf)
        off = b.n = 0
        while off < n:
            seg_len = min(CSEG, n - off)
            if seg_len <= c4gh.CIPHER_DIFF:
                raise IngestError(
                    "truncated",
                    f"{self.label}: last Crypt4GH segment (#{self.segment}) has only {seg_len} bytes, under "
                    "nonce + MAC: the file is truncated",
                )
            self._open(b.addr + b.n, self.caddr + off, seg_len, self.eof and off + seg_len == n)
            b.n += seg_len - c4gh.CIPHER_DIFF
            off += seg_len
            self.segment += 1
        if b.n:
            self.sha.update(b.view[: b.n])
            self.count[0] += b.n

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

    def produce(self, b: _Batch) -> None:
        """Fill B and hand it to the md5 stage; at the end of the source end that stage's stream."""
        self.fill(b)
        if b.n:
            self.to_md5.put(b)
        else:
            self.pool.put(b)
        if self.eof:
            self.end()

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.to_md5.put(_END)

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.stop.set()

    def _read(self) -> None:
        try:
            while not self.eof and not self.stop.is_set() and (b := self.pool.get()) is not None:
                self.produce(b)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread, which raises it
            self.fail(e)
        finally:
            self.end()

    def _hash(self) -> None:
        while (b := self.to_md5.get()) is not _END:
            if not self.stop.is_set():
                try:
                    self.md5.update(b.view[: b.n])
                except BaseException as e:  # noqa: BLE001 - handed to the caller's thread, which raises it
                    self.fail(e)
            self.to_caller.put(b)
        self.to_caller.put(_END)

    def next_batch(self) -> _Batch | None:
        """The caller's next hashed batch (running the reader's part itself with 2 threads), or None."""
        if self.inline:
            while not self.eof and not self.stop.is_set():
                try:
                    b = self.pool.get_nowait()
                except queue.Empty:
                    break
                if b is None:  # only close() puts None
                    break
                self.produce(b)
        b = self.to_caller.get()
        if self.error is not None:
            raise self.error
        return b

    def close(self) -> None:
        """Stop and join both threads (idempotent): nothing of this file keeps running after it."""
        self.stop.set()
        self.pool.put(None)  # wakes a reader waiting for a buffer
        if self.inline:
            self.end()
        for t in reversed(self.threads):
            t.join()


def for_file(
    source: ByteSource, task: Any, ctx: Any, size: int, hashers: tuple[Any, Any], count: list[int]
) -> Iterator[bytes | memoryview] | None:
    """`reencrypt` for a Crypt4GH source of SIZE bytes when `threads_for` says threads (CTX is stream's
    PipelineContext, TASK its FileTask); None: the serial pipeline (which also reports a missing key)."""
    n = threads_for(ctx.threads_per_file, size, task)
    if n < 2 or ctx.inbox_secret_key is None:
        return None
    return reencrypt(
        source,
        ctx.inbox_secret_key,
        ctx.archive_public_key,
        hashers,
        count,
        threads=n,
        chunk_size=ctx.chunk_size,
        label=task.rel,
    )


def reencrypt(
    source: ByteSource,
    secret_key: bytes,
    recipient_pk: bytes,
    hashers: tuple[Any, Any],
    count: list[int],
    *,
    threads: int = 3,
    chunk_size: int = 4 << 20,
    label: str = "<stream>",
) -> Iterator[bytes | memoryview]:
    """The archived Crypt4GH file for a Crypt4GH SOURCE, its stages on THREADS threads (2 or 3).

    HASHERS (md5, sha256) get the plaintext and count[0] its length, as in the serial pipeline. Yields the
    header, then one view per batch (reused for the next: write it before asking for more). Errors on
    any thread are raised here, in the caller's thread; closing the generator stops and joins the rest."""
    assert SODIUM is not None, "spread.reencrypt without libsodium: threads_for answers 1"
    hdr = c4gh.read_header(source, secret_key, label)
    session_key = os.urandom(32)
    yield c4gh.build_header([c4gh_header.make_packet_data_enc(0, session_key)], recipient_pk)
    segments = max(MIN_BATCH, c4gh.segments_per_read(chunk_size))
    obuf = bytearray(segments * CSEG)
    oview, oaddr = memoryview(obuf), _address(obuf)
    stages = _Stages(source, hdr.session_keys, hashers, count, threads=threads, segments=segments, label=label)
    try:
        while (b := stages.next_batch()) is not _END:
            olen = 0
            for pos in range(0, b.n, SEG):
                mlen = min(SEG, b.n - pos)
                SODIUM.randombytes_buf(oaddr + olen, NONCE)
                SODIUM.crypto_aead_chacha20poly1305_ietf_encrypt(
                    oaddr + olen + NONCE, None, b.addr + pos, mlen, None, 0, None, oaddr + olen, session_key
                )
                olen += mlen + c4gh.CIPHER_DIFF
            stages.pool.put(b)
            yield oview[:olen]
    finally:
        stages.close()
