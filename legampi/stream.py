"""The single-pass file pipeline: read, decrypt, checksum, re-encrypt, checksum, write, verify, commit.

One pass over the source with bounded buffers (a few MB whatever the file size): the plaintext only
ever lives in memory, and a file reaches its final name in the archive (end_storage, or an S3 bucket
through legampi.storage) only after every check passed.
`process_file` never raises for a per-file problem; it returns a FileResult that rank 0 records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legampi import archive, checksum, provenance, spread, storage, transfer
from legampi.formats import IngestError, detect_format, open_plaintext
from legampi.formats import crypt4gh as c4gh
from legampi.keys import fingerprint, load_public_key, load_secret_key
from legampi.redact import redact
from legampi.s3config import ArchiveConfig
from legampi.storage import io_error as _io_error

LOG = logging.getLogger(__name__)
HOST = socket.gethostname()
# Failures caused by the file's content: moving such a source aside lets the rest of a dataset go on.
# Environment failures (io, nospace, archive_conflict, unsafe_path) leave the source where it is, and so does
# `config` (a key, password or passphrase the operator must fix): never quarantined, never `failed`.
QUARANTINE_KINDS = frozenset({"checksum", "corrupt", "truncated", "key", "format", "transfer_corrupt"})


@dataclass(slots=True)
class FileTask:
    """One file to ingest, as rank 0 hands it to a worker."""

    file_id: str
    dataset_id: str
    rel: str  # posix path relative to the processing folder, as registered
    md5: str | None  # expected plaintext md5 (lower-case hex) from the manifest
    sha256: str | None  # expected plaintext sha256, when the manifest has it
    size: int | None = None  # size of the source file, for scheduling
    transfer_checksum: str | None = None  # of the source as transferred (EGA `checksum`), lower-case hex
    transfer_checksum_type: str | None = None  # 'md5' | 'sha256'
    spread: bool = False  # rank 0: fewer files left than workers (threads_per_file = auto may use threads)
    node_workers: int = 0  # worker ranks on this worker's node, as rank 0 knows them (0: unknown)


@dataclass
class FileResult:
    """What happened to one file; everything rank 0 needs to update the tracking database."""

    file_id: str
    rel: str
    status: str  # 'available' or 'failed'
    archive_path: str | None = None  # absolute path of the archived file, or s3://bucket/key
    md5: str | None = None  # computed plaintext md5
    sha256: str | None = None  # computed plaintext sha256
    archive_checksum: str | None = None
    archive_checksum_type: str | None = None  # 'sha256' or 'md5'
    archive_key: str | None = None  # fingerprint of the archive public key used
    plain_size: int | None = None
    archive_size: int | None = None
    bytes_read: int = 0
    seconds: float = 0.0
    error: str | None = None
    error_kind: str | None = None
    quarantined_to: str | None = None
    host: str = ""
    rank: int = 0


@dataclass(frozen=True)
class PipelineContext:
    """Everything a worker needs to process files; secrets are kept out of repr()."""

    processing: Path
    end_storage: Path | None  # None with an S3 archive and no folder configured
    quarantine: Path | None
    extensions: tuple[str, ...]  # e.g. ('.c4gh', '.cip', '.gpg')
    inbox_secret_key: bytes | None = field(repr=False)  # raw 32-byte X25519 secret
    archive_public_key: bytes = field(repr=False)  # raw 32-byte public key
    reencrypt: str = "full"  # 'full' | 'header'
    archive_checksum: str = "sha256"  # 'sha256' | 'md5'
    legacy_password: str | None = field(default=None, repr=False)
    legacy_cipher: str = "aes128"  # 'aes128' | 'aes256'
    gnupg_home: Path | None = None
    gpg_passphrase: str | None = field(default=None, repr=False)
    decrypt_via: str = "local"  # 'local' | 'res'
    res_url: str | None = None
    res_source_format: str = "aes128"
    res_source_key: str | None = field(default=None, repr=False)
    file_mode: int = 0o640
    chunk_size: int = 4 * 1024 * 1024  # bytes read per I/O call (rounded to whole segments)
    archive: ArchiveConfig | None = None  # [archive]; None or backend posix: end_storage
    job_id: str | None = None  # named in an S3 upload's claim, when the worker knows it
    threads_per_file: str = "auto"  # a Crypt4GH file's stages on '1', '2', '3' threads, or 'auto' (legampi.spread)

    def __post_init__(self) -> None:
        checks = [
            ("reencrypt", self.reencrypt, ("full", "header")),
            ("archive_checksum", self.archive_checksum, checksum.ALGOS),
            ("legacy_cipher", self.legacy_cipher, ("aes128", "aes256")),
            ("decrypt_via", self.decrypt_via, ("local", "res")),
        ]
        if not (self.threads_per_file == "auto" or self.threads_per_file.isdigit() and int(self.threads_per_file)):
            raise ValueError(f"threads_per_file = {self.threads_per_file!r}; expected auto or a number (1, 2, 3)")
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"{name} = {value!r}; expected one of {', '.join(allowed)}")
        if len(self.archive_public_key) != 32:
            raise ValueError("archive public key must be 32 bytes")
        if self.inbox_secret_key is not None and len(self.inbox_secret_key) != 32:
            raise ValueError("inbox secret key must be 32 bytes")
        if self.chunk_size < 65536:
            raise ValueError(f"chunk_size = {self.chunk_size}; at least 65536 bytes")
        object.__setattr__(
            self, "extensions", tuple((e if e.startswith(".") else "." + e).lower() for e in self.extensions)
        )

    @classmethod
    def from_config(cls, cfg: Any) -> PipelineContext:
        """Build the context from legampi.config's object (attribute names are the contract)."""
        ws, func, crypto = cfg.workspaces, cfg.func, cfg.crypto

        def reveal(secret: Any) -> str | None:
            # config.Secret has .reveal(); accept a plain str too (res_source_key may be either)
            if secret is None:
                return None
            return secret.reveal() if hasattr(secret, "reveal") else str(secret)

        inbox = None
        if crypto.inbox_secret_key is not None:
            inbox = load_secret_key(crypto.inbox_secret_key, reveal(crypto.inbox_passphrase))
        return cls(
            processing=Path(ws.processing),
            end_storage=Path(ws.end_storage) if ws.end_storage is not None else None,
            quarantine=Path(ws.quarantine) if ws.quarantine is not None else None,
            extensions=tuple(func.extensions),
            inbox_secret_key=inbox,
            archive_public_key=load_public_key(crypto.archive_public_key),
            reencrypt=crypto.reencrypt,
            archive_checksum=crypto.archive_checksum,
            legacy_password=reveal(crypto.legacy_password),
            legacy_cipher=crypto.legacy_cipher,
            gnupg_home=Path(crypto.gnupg_home) if crypto.gnupg_home is not None else None,
            gpg_passphrase=reveal(crypto.gpg_passphrase),
            decrypt_via=crypto.decrypt_via,
            res_url=func.res_url,
            res_source_format=crypto.res_source_format,
            res_source_key=reveal(crypto.res_source_key),
            file_mode=crypto.file_mode,
            chunk_size=func.chunk_size,
            archive=getattr(cfg, "archive", None),
            threads_per_file=func.threads_per_file,
        )

    def secrets(self) -> list[str]:
        """Secret strings to scrub from any message that leaves the worker."""
        return [s for s in (self.legacy_password, self.gpg_passphrase, self.res_source_key) if s]


def _scrub(text: str, ctx: PipelineContext) -> str:
    """Secrets out of text that came from outside legampi (exception strings), before it joins our words."""
    return redact(text, ctx.secrets())


def _valid_hex(value: str | None, what: str, rel: str) -> str | None:
    if value is None or value == "":
        return None
    v = value.strip().lower()
    if not checksum.is_hex_digest(v, what):
        raise IngestError("checksum", f"{rel}: manifest {what} {value!r} is not a valid {what} digest")
    return v


def process_file(task: FileTask, ctx: PipelineContext, *, rank: int = 0) -> FileResult:
    """Ingest one file; failures come back as a FileResult with status 'failed', never as exceptions."""
    return start_file(task, ctx, rank=rank)()


def process_file_overlapped(task: FileTask, ctx: PipelineContext, *, rank: int = 0) -> Future[FileResult]:
    """Stream the file now; fsync, check, commit and record it in a thread, while the caller streams the next.

    The data fsync is ~7% of a 100 MB file's time on the development VM, and a worker waiting for the disk
    leaves its core idle; overlapped, the next file's decryption uses that time. Nothing changes in what
    is durable when: the file still reaches its final name only after the fsync and every check, and the
    result (what rank 0 records) exists only after that.
    """
    finish = start_file(task, ctx, rank=rank)
    future: Future[FileResult] = Future()

    def run() -> None:
        try:
            future.set_result(finish())
        except Exception as e:  # noqa: BLE001 - finish() records per-file problems itself, so this is a
            future.set_exception(e)  # bug: Future.result() re-raises it in the worker, which ends the job

    threading.Thread(target=run, name=f"legampi-finish-{task.file_id}", daemon=True).start()
    return future


def start_file(task: FileTask, ctx: PipelineContext, *, rank: int = 0) -> Callable[[], FileResult]:
    """Read, decrypt, hash, re-encrypt and write the file to its temp name (the CPU-bound part); the
    returned function finishes it: fsync, compare with the manifest, move into place, write the sidecar.
    Failures of either part come back in the FileResult, never as exceptions."""
    t0 = time.monotonic()
    res = FileResult(file_id=task.file_id, rel=task.rel, status="failed", host=HOST, rank=rank)
    steps = _steps(task, ctx, res)
    ended = _advance(steps, task, res, ctx)  # True: the streaming part failed; nothing is left to finish
    streamed = time.monotonic() - t0

    def finish() -> FileResult:
        t1 = time.monotonic()
        if not ended:
            _advance(steps, task, res, ctx)
        _conclude(res, ctx)
        res.seconds = streamed + time.monotonic() - t1  # working time, not time spent waiting for a thread
        return res

    return finish


def _advance(steps: Iterator[None], task: FileTask, res: FileResult, ctx: PipelineContext) -> bool:
    """Run the pipeline to its next pause; True when it ended (done, or failed with res.error set)."""
    try:
        next(steps)
        return False
    except StopIteration:
        return True
    except IngestError as e:
        res.error, res.error_kind = e.message, e.kind
    except OSError as e:
        err = _io_error(task.rel, "I/O error", e)
        res.error, res.error_kind = err.message, err.kind
    except Exception as e:  # a bug must not take the whole MPI job down: record it on the file
        LOG.exception("unexpected error while processing %s", task.rel)
        res.error, res.error_kind = f"{task.rel}: unexpected {type(e).__name__}: {_scrub(str(e), ctx)}", "io"
    return True


def _conclude(res: FileResult, ctx: PipelineContext) -> None:
    """A failed file: no archive fields, the source quarantined when its content is at fault.

    The message is not scrubbed as a whole: legampi's own words never hold a secret, and text from
    outside was scrubbed where it entered (`_scrub`)."""
    if res.status == "failed":
        for name in ("archive_path", "archive_checksum", "archive_checksum_type", "archive_size"):
            setattr(res, name, None)
        if ctx.quarantine is not None and res.error_kind in QUARANTINE_KINDS:
            try:  # these kinds come from reading the file, so its path passed safe_source already
                src = archive.safe_source(ctx.processing, res.rel)
                moved = archive.quarantine_source(src, ctx.quarantine, res.rel)
                res.quarantined_to = str(moved)
                res.error = f"{res.error}; source moved to {moved}"
            except (OSError, IngestError) as e:
                why = e.message if isinstance(e, IngestError) else _scrub(str(e), ctx)
                res.error = f"{res.error}; moving the source to quarantine failed: {why}"
        res.error = (res.error or "unknown failure").replace("\n", " ")


def _steps(task: FileTask, ctx: PipelineContext, res: FileResult) -> Iterator[None]:
    """The pipeline as a generator: it pauses once, after the last byte is written to the temp file and
    before its fsync, so `start_file` can hand the rest to another thread. The try/finally below cleans
    up whichever way it ends (finished, failed, or closed unfinished)."""
    rel = task.rel
    src = archive.safe_source(ctx.processing, rel)
    expected_md5 = _valid_hex(task.md5, "md5", rel)
    expected_sha = _valid_hex(task.sha256, "sha256", rel)
    expected_transfer = transfer.expected(task.transfer_checksum, task.transfer_checksum_type, rel)
    fmt = detect_format(rel, ctx.extensions)
    arch_rel = archive.archive_name(rel, ctx.extensions)
    store = storage.open_archive(ctx.archive, ctx.end_storage, ctx.file_mode, ctx.archive_checksum)
    if store.exists(arch_rel):
        raise IngestError(
            "archive_conflict",
            f"{rel}: {store.location(arch_rel)} already exists and is not this file's recorded copy (a foreign "
            f"file, or another registered name's); not overwritten, the source {src} is kept",
        )
    fp = fingerprint(ctx.archive_public_key)
    try:
        fd = archive.open_source(src, rel)
    except OSError as e:
        raise _io_error(rel, "cannot open source", e) from None
    source = open(fd, "rb", buffering=0)
    writer: storage.ArchiveWriter | None = None
    feeder: transfer.Feeder | None = None
    stages: list[Any] = []  # generators to close on failure (a gpg child must not outlive its file)
    try:
        st0 = os.fstat(fd)
        # Buffers sized to the file: a 1 KiB file must not allocate several MiB (bookkeeping-bound runs).
        chunk = max(c4gh.CIPHER_SEGMENT_SIZE, min(ctx.chunk_size, st0.st_size + c4gh.CIPHER_SEGMENT_SIZE))
        if chunk != ctx.chunk_size:
            ctx = dataclasses.replace(ctx, chunk_size=chunk)
        # the claim: what the copy is for, known before the pass (an S3 upload carries it from its start)
        claim = provenance.record(task.file_id, rel, task.dataset_id, expected_md5, expected_sha, None, fp)
        writer = store.open_writer(arch_rel, claim, st0.st_size, ctx.job_id)
        md5, sha = hashlib.md5(), hashlib.sha256()
        count = [0]
        # With a transfer checksum registered the decryptor reads the source through its hash (no second read)
        reader = transfer.TransferHash(source, *expected_transfer, rel) if expected_transfer else None
        raw: Any = reader or source
        if fmt == "crypt4gh" and ctx.reencrypt == "header":
            if ctx.inbox_secret_key is None:
                raise IngestError("config", f"{rel}: is Crypt4GH but [crypto] inbox_secret_key is not set")

            def sink(plain: memoryview) -> None:
                md5.update(plain)
                sha.update(plain)
                count[0] += len(plain)

            out: Iterator[Any] = c4gh.reencrypt_header_stream(
                raw, ctx.inbox_secret_key, ctx.archive_public_key, sink, chunk_size=ctx.chunk_size, label=rel
            )
            stages.append(out)
        elif fmt == "crypt4gh" and (
            threaded := spread.for_file(raw, task, ctx, st0.st_size, (md5, sha), count, writer)
        ):
            out = threaded
            stages.append(out)
        else:
            from_res = ctx.decrypt_via == "res" and fmt in ("legacy_aes", "openpgp")
            if reader is not None and from_res:  # the service reads the file itself: check it before
                reader.drain(ctx.chunk_size)
                if bad := reader.mismatch():
                    raise bad
            elif reader is not None and fmt == "openpgp":  # gpg reads a file descriptor: feed it a pipe
                feeder = transfer.Feeder(reader, ctx.chunk_size)
                raw = feeder.pipe
            plain = open_plaintext(src if from_res else raw, fmt, ctx, label=rel)
            if feeder is not None:
                stages.append(plain)
                plain = feeder.after_start(plain)
            hashed = checksum.hashing(plain, [md5, sha], count)
            out = c4gh.encrypt_stream(
                hashed, ctx.archive_public_key, batch_segments=c4gh.segments_per_read(ctx.chunk_size)
            )
            stages += [plain, hashed, out]
        if reader is not None:  # compared at the end of the source, before the plaintext checks
            out = transfer.verified(out, reader, feeder, ctx.chunk_size)
            stages.append(out)
        while True:
            try:
                block = next(out)
            except StopIteration:
                break
            except OSError as e:
                raise _io_error(rel, "reading or decrypting the source", e) from None
            writer.write(block)
        for gen in reversed(stages):
            gen.close()  # done with the source: a gpg child ends now, not after the fsync
        yield
        archive_hex = writer.finish()
        st1 = os.stat(src, follow_symlinks=False)
        if (st1.st_ino, st1.st_size, st1.st_mtime_ns) != (st0.st_ino, st0.st_size, st0.st_mtime_ns):
            raise IngestError(
                "io",
                f"{rel}: source changed while it was being processed (still being "
                "written?); try again once the transfer has finished",
            )
        md5_hex, sha_hex = md5.hexdigest(), sha.hexdigest()
        hint = ""
        if fmt == "legacy_aes":
            from legampi.formats.legacy_aes import WRONG_PASSWORD_HINT  # only .cip needs the AES module

            hint = f" ({WRONG_PASSWORD_HINT})"
        if expected_md5 is not None and md5_hex != expected_md5:
            raise IngestError(
                "checksum", f"{rel}: plaintext md5 mismatch: manifest expects {expected_md5}, computed {md5_hex}{hint}"
            )
        if expected_sha is not None and sha_hex != expected_sha:
            raise IngestError(
                "checksum",
                f"{rel}: plaintext sha256 mismatch: manifest expects {expected_sha}, computed {sha_hex}{hint}",
            )
        prov = provenance.record(task.file_id, rel, task.dataset_id, md5_hex, sha_hex, count[0], fp)
        res.archive_path = writer.commit(prov)
        res.md5, res.sha256 = md5_hex, sha_hex
        res.archive_checksum, res.archive_checksum_type = archive_hex, ctx.archive_checksum
        res.archive_key = fp
        res.plain_size = count[0]
        res.archive_size = writer.size
        res.bytes_read = st0.st_size
        res.status = "available"
    finally:
        for gen in reversed(stages):
            gen.close()
        if feeder is not None:
            feeder.finish()  # a source read error is reported by `verified`, or moot after another failure
        source.close()
        if writer is not None and not writer.committed:
            writer.abort()
