"""Where archived files live: the seam between the pipeline and its archive backend (folder or S3).

The pipeline, recovery, verify, rekey and export speak in archive names (the relative path
`archive.archive_name` gives, `<path>.c4gh`) and *locations* (what the database records as
`archive_path`: an absolute path for the folder, `s3://bucket/key` for S3). An `Archive` turns one into
the other, says whether a name is taken, and opens a writer with one face for both backends:

    w = arch.open_writer(rel, claim, expected_size)   # write(), finish() -> hex, commit(prov), abort()

`PosixArchive` is end_storage as before issue 16 (temp file, fsync, sidecar with provenance, link);
`S3Archive` streams a multipart upload made visible with If-None-Match (legampi.s3writer).

One S3 client per process: `open_archive` caches the S3Store of each [archive] (boto3 clients must not
cross a fork, and credentials are never pickled: each rank resolves its own). Functions that only see a
location (a database row's `archive_path`) find the store through `store_at`, which uses the [archive]
of the configuration this process loaded (`remember`, called by config.load).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Protocol

from legampi import archive, groupsync, provenance
from legampi.formats import IngestError
from legampi.s3config import ArchiveConfig

S3_SCHEME = "s3://"
_STORES: dict[ArchiveConfig, Any] = {}  # per process: ArchiveConfig -> S3Store
_KNOWN: dict[str, ArchiveConfig] = {}  # bucket -> the [archive] loaded in this process
_CURRENT: ArchiveConfig | None = None


def io_error(rel: str, stage: str, e: OSError) -> IngestError:
    """An OSError as the failure kind the operator acts on (`nospace` or `io`), naming the stage."""
    kind = "nospace" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "io"
    reason = e.strerror or str(e)
    if kind == "nospace":
        reason = "no space left on device" if e.errno == errno.ENOSPC else "disk quota exceeded"
    return IngestError(kind, f"{rel}: {stage}: {reason}")


class ArchiveWriter(Protocol):
    """What the pipeline writes through (archive.TempArchiveFile's face, plus commit with provenance)."""

    @property
    def size(self) -> int: ...
    @property
    def committed(self) -> bool: ...
    def write(self, data: bytes | bytearray | memoryview) -> None: ...
    def finish(self) -> str: ...
    def commit(self, prov: dict[str, Any]) -> str: ...
    def abort(self) -> None: ...


class Archive(Protocol):
    backend: str

    def location(self, rel: str) -> str: ...
    def exists(self, rel: str) -> bool: ...
    def open_writer(
        self, rel: str, claim: dict[str, Any], expected_size: int | None, job_id: str | None = None
    ) -> ArchiveWriter: ...


class _PosixWriter:
    """TempArchiveFile + provenance.commit: the sidecar (with provenance) first, then the link."""

    def __init__(self, final: Path, rel: str, mode: int, algo: str) -> None:
        self.tmp = archive.TempArchiveFile(final, mode, algo)
        self.rel, self.mode, self.algo = rel, mode, algo
        self.digest: str | None = None
        self.group: groupsync.Group | None = None
        self.handed = False  # to a group, which commits or removes the temp file

    @property
    def size(self) -> int:
        return self.tmp.size

    @property
    def committed(self) -> bool:
        return self.tmp.committed or self.handed

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self.tmp.write(data)
        except OSError as e:
            raise io_error(self.rel, f"writing the archive temp file in {self.tmp.final.parent}", e) from None

    def finish(self) -> str:
        self.group = groupsync.collecting()  # a group fsyncs the data later, with its other files
        try:
            self.digest = self.tmp.finish() if self.group is None else self.tmp.finish(sync=False)
        except OSError as e:
            raise io_error(self.rel, f"flushing the archive temp file in {self.tmp.final.parent}", e) from None
        return self.digest

    def commit(self, prov: dict[str, Any]) -> str:
        """Final and durable when this returns; in a group, handed to it (final once `Group.sync` says so)."""
        assert self.digest is not None, "finish() before commit()"
        if self.group is not None:
            self.group.add(self.tmp, self.digest, self.algo, self.mode, prov, self.rel)
            self.handed = True
        else:
            provenance.commit(self.tmp, self.digest, self.algo, self.mode, prov, self.rel)
        return str(self.tmp.final.absolute())

    def abort(self) -> None:
        self.tmp.abort()


class PosixArchive:
    """end_storage: a folder on a POSIX file system."""

    backend = "posix"

    def __init__(self, root: Path, file_mode: int = 0o640, checksum: str = "sha256") -> None:
        self.root, self.file_mode, self.checksum = Path(root), file_mode, checksum

    def path(self, rel: str) -> Path:
        return self.root.joinpath(*rel.split("/"))

    def location(self, rel: str) -> str:
        return str(self.path(rel).absolute())

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.path(rel))

    def open_writer(
        self, rel: str, claim: dict[str, Any], expected_size: int | None, job_id: str | None = None
    ) -> ArchiveWriter:
        final = self.path(rel)
        try:
            archive.make_dirs(final.parent, self.root)
            return _PosixWriter(final, rel, self.file_mode, self.checksum)
        except OSError as e:
            raise io_error(rel, f"cannot create the archive temp file in {final.parent}", e) from None


class S3Archive:
    """A bucket (and key prefix) on an S3 server; the store (boto3 client) is made on first use."""

    backend = "s3"

    def __init__(self, cfg: ArchiveConfig, checksum: str = "sha256") -> None:
        self.cfg, self.checksum = cfg, checksum

    @property
    def store(self) -> Any:
        from legampi.s3config import ArchiveConfigError

        try:
            return s3_store(self.cfg)
        except ArchiveConfigError as exc:  # no credentials: the operator's problem, not the file's
            raise IngestError("config", f"[archive] backend = s3: {exc.message}") from None

    def location(self, rel: str) -> str:
        return f"{S3_SCHEME}{self.cfg.s3_bucket}/{self.cfg.s3_prefix}{rel}"

    def exists(self, rel: str) -> bool:
        return bool(self.store.exists(rel))

    def open_writer(
        self, rel: str, claim: dict[str, Any], expected_size: int | None, job_id: str | None = None
    ) -> ArchiveWriter:
        from legampi.s3writer import S3ArchiveWriter

        return S3ArchiveWriter(self.store, rel, claim, expected_size, self.checksum, job_id)


def open_archive(
    cfg: ArchiveConfig | None, end_storage: Path | None, file_mode: int = 0o640, checksum: str = "sha256"
) -> PosixArchive | S3Archive:
    """The archive an [archive] section (None: the folder) and end_storage describe."""
    if cfg is not None and cfg.backend == "s3":
        return S3Archive(cfg, checksum)
    if end_storage is None:
        raise ValueError("the folder archive needs [workspaces] end_storage")
    return PosixArchive(end_storage, file_mode, checksum)


def from_config(cfg: Any) -> PosixArchive | S3Archive:
    """The archive of a legampi.config.Config."""
    ws, crypto = cfg.workspaces, cfg.crypto
    return open_archive(getattr(cfg, "archive", None), ws.end_storage, crypto.file_mode, crypto.archive_checksum)


def s3_store(cfg: ArchiveConfig) -> Any:
    """This process's S3Store for CFG (made once; resolves the credentials of this process)."""
    store = _STORES.get(cfg)
    if store is None:
        from legampi.s3store import S3Store

        store = _STORES[cfg] = S3Store(cfg)
    return store


def key_problem(cfg: ArchiveConfig, rel: str) -> str | None:
    """Why archive name REL cannot be an object key under CFG's prefix (S3 keys are at most 1024 bytes)."""
    n = len((cfg.s3_prefix + rel).encode("utf-8"))
    return None if n <= 1024 else f"{rel!r}: the S3 key would be {n} bytes, S3 allows 1024"


def remember(cfg: ArchiveConfig) -> None:
    """Note the [archive] this process loaded, so a `s3://` location can be opened (see `store_at`)."""
    global _CURRENT
    _CURRENT = cfg
    if cfg.backend == "s3" and cfg.s3_bucket:
        _KNOWN[cfg.s3_bucket] = cfg


def configured() -> ArchiveConfig | None:
    """The [archive] of the configuration this process loaded last (None: none loaded)."""
    return _CURRENT


def is_s3(location: str | os.PathLike[str] | None) -> bool:
    return isinstance(location, str) and location.startswith(S3_SCHEME)


def store_at(location: str, store: Any = None) -> tuple[Any, str]:
    """(S3Store, archive name) of an `s3://bucket/key` location; STORE if given, else this process's
    store for the configured [archive] of that bucket. IngestError `config` when none is configured."""
    bucket, _, key = location[len(S3_SCHEME) :].partition("/")
    if store is None:
        cfg = _KNOWN.get(bucket)
        if cfg is None:
            raise IngestError(
                "config", f"{location}: the configuration has no [archive] backend = s3 with s3_bucket = {bucket}"
            )
        store = s3_store(cfg)
    if store.bucket != bucket:
        raise IngestError("config", f"{location}: not in the configured bucket {store.bucket}")
    rel = store.rel_of(key)
    if rel is None:
        raise IngestError("config", f"{location}: not under the configured key prefix {store.prefix!r}")
    return store, rel
