"""Placing files in end_storage: path safety, temp files, durable no-overwrite commit, source removal.

Everything here keeps one promise: a name in end_storage is either absent or a complete, verified,
fsynced file. Work happens under a recognisable temp name in the final folder (same filesystem), and
the final name appears only through os.link, which never replaces an existing file.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import secrets
import shutil
from pathlib import Path, PurePosixPath

from legampi.formats.base import IngestError
from legampi.workspace import UnsafeName, check_file_name

ARCHIVE_EXTENSION = ".c4gh"
TEMP_MARKER = ".legampi-tmp-"
PENDING_SUFFIX = ".rekey"  # a key rotation's marker next to the archived file (see rekey)
DIR_MODE = 0o750
log = logging.getLogger("legampi.archive")
WRITEBACK_EVERY = 32 << 20  # bytes: a big file's data is sent to disk as it is written (see TempArchiveFile.write)
_TEMP_RE = re.compile(r"^\..+" + re.escape(TEMP_MARKER) + r"\d+-[0-9a-f]{8,}$")


def temp_name(final_name: str) -> str:
    """Hidden temp name next to `final_name`, unique per process and call, recognisable by recovery."""
    return f".{final_name}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(6)}"


def is_temp_name(name: str) -> bool:
    """True for leftovers of an interrupted write (data file or sidecar), which recovery may delete."""
    return bool(_TEMP_RE.match(os.path.basename(name)))


def final_name_of_temp(name: str) -> str:
    """The final file name a temp name was standing in for."""
    base = os.path.basename(name)
    if not is_temp_name(base):
        raise ValueError(f"{name} is not a legampi temp name")
    return base[1 : base.rindex(TEMP_MARKER)]


def _norm_ext(e: str) -> str:
    return (e if e.startswith(".") else "." + e).lower()


def check_rel(file_name: str) -> PurePosixPath:
    """Refuse registered file names that could point outside the workspace (IngestError `unsafe_path`).

    The rules are workspace.check_file_name's, the one path validator (register applies its stricter
    form); this is its face for the pipeline, which reports refusals as a per-file failure kind."""
    try:
        return check_file_name(file_name)
    except UnsafeName as exc:
        raise IngestError("unsafe_path", str(exc)) from None


def archive_name(file_name: str, extensions: tuple[str, ...] | list[str]) -> str:
    """Relative archive path: the input's encryption extension replaced by `.c4gh` (added if none)."""
    p = check_rel(file_name)
    name = p.name
    dot = name.rfind(".")
    suffix = name[dot:].lower() if dot > 0 else ""
    if suffix and suffix in {_norm_ext(e) for e in extensions}:
        name = name[:dot]
    return str(p.with_name(name + ARCHIVE_EXTENSION))


def safe_source(processing: Path, file_name: str) -> Path:
    """Absolute source path for `file_name`, refusing symlinks and anything resolving outside `processing`."""
    p = check_rel(file_name)
    root = Path(processing).resolve()
    src = root.joinpath(*p.parts)
    if src.is_symlink():
        raise IngestError("unsafe_path", f"{file_name}: source is a symbolic link; refusing to follow it")
    resolved = src.resolve()
    if resolved != src or not resolved.is_relative_to(root):
        raise IngestError(
            "unsafe_path",
            f"{file_name}: source resolves to {resolved}, outside the processing folder {root} (a symlinked folder?)",
        )
    return src


def open_source(src: Path, file_name: str) -> int:
    """Open the source read-only without following a symlink swapped in after the checks."""
    try:
        return os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise IngestError("unsafe_path", f"{file_name}: source is a symbolic link; refusing to follow it") from None
        raise


def final_path(end_storage: Path, file_name: str, extensions: tuple[str, ...] | list[str]) -> Path:
    """Absolute archive path of `file_name` inside end_storage."""
    return Path(end_storage).joinpath(*PurePosixPath(archive_name(file_name, extensions)).parts)


def make_dirs(path: Path, top: Path, mode: int = DIR_MODE) -> None:
    """Create `path` and missing parents below `top` with `mode` (not left to the umask)."""
    path = Path(path)
    top_abs = Path(top).absolute()
    if path.absolute() != top_abs and top_abs not in path.absolute().parents:
        raise IngestError("unsafe_path", f"{path} is outside {top}")
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            continue  # another rank created it meanwhile; a non-directory makes the next step fail
        os.chmod(d, mode)


# File systems whose journal commits the directory operations of one folder in the order they were made,
# so one folder fsync after link(A) then link(B) can persist nothing, A, or A and B, but never B alone.
# POSIX does not promise this; ext3/ext4 (metadata journal, any data= mode) and XFS (ordered log) do.
# provenance.commit relies on it, on these only, to make a sidecar and its archive file durable with one
# folder fsync; anywhere else (NFS, Lustre, GPFS, btrfs, tmpfs...) it fsyncs the folder after each link.
ORDERED_DIR_FS = frozenset({"ext3", "ext4", "xfs"})
_FS_TYPES: dict[int, str] = {}


def fs_type(path: Path) -> str:
    """The file system type (as /proc/self/mountinfo names it) of the folder PATH; '' if unknown."""
    dev = os.stat(path).st_dev
    if dev not in _FS_TYPES:
        _FS_TYPES[dev] = _mount_type(os.major(dev), os.minor(dev))
    return _FS_TYPES[dev]


def _mount_type(major: int, minor: int) -> str:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                left, sep, right = line.partition(" - ")
                fields = left.split()
                if sep and len(fields) > 2 and fields[2] == f"{major}:{minor}":
                    return right.split()[0]
    except OSError:
        pass
    return ""


def orders_dir_ops(path: Path) -> bool:
    """True when directory operations in folder PATH become durable in the order they were made."""
    return fs_type(path) in ORDERED_DIR_FS


def fsync_dir(path: Path) -> None:
    """Make a directory entry change (link, unlink, rename) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TempArchiveFile:
    """A file being written under a temp name in its final folder; commit() links it into place."""

    def __init__(self, final: Path, mode: int = 0o640, checksum: str = "sha256") -> None:
        self.final = Path(final)
        self.mode = mode
        self.temp = self.final.parent / temp_name(self.final.name)
        self.hasher = hashlib.new(checksum)
        self.checksum_type = checksum
        self.size = self._sent = 0  # bytes written / bytes whose writeback was started
        self.committed = self.finished = False
        self._fd: int | None = os.open(
            self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode
        )
        try:
            os.fchmod(self._fd, mode)  # the umask must not decide the archive's permissions
        except BaseException:
            self.abort()
            raise

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hash and write all of `data` (os.write may write less than asked)."""
        if self._fd is None or self.finished:
            raise ValueError("write to a finished archive temp file")
        view = memoryview(data)
        self.hasher.update(view)
        total = len(view)
        off = 0
        while off < total:
            off += os.write(self._fd, view[off:])
        self.size += total
        if self.size - self._sent >= WRITEBACK_EVERY:
            self._start_writeback_of_written()

    def _start_writeback_of_written(self) -> None:
        """Start (not wait for) writeback of what was written since the last call: on Linux DONTNEED on a
        dirty range queues its writeback, so a huge file's final fsync waits for the last stretch only,
        not for the whole file (and the file does not fill the page cache). A refused hint changes
        nothing that matters, the fsync still makes the file durable: hinting stops for this file."""
        assert self._fd is not None
        try:
            os.posix_fadvise(self._fd, self._sent, self.size - self._sent, os.POSIX_FADV_DONTNEED)
        except OSError as exc:
            log.debug("writeback hint refused for %s (%s); the final fsync does it all", self.temp, exc)
            self._sent = 1 << 62
            return
        self._sent = self.size

    def finish(self, sync: bool = True) -> str:
        """fsync and close the temp file; return the hex checksum of the bytes written. sync=False leaves
        both to `sync()`, so that a group of small files is made durable in a row (legampi.groupsync)."""
        if self._fd is None or self.finished:
            raise ValueError("archive temp file already finished")
        self.finished = True
        if sync:
            self.sync()
        return self.hasher.hexdigest()

    def start_writeback(self) -> None:
        """Start writing the finished file's data, without waiting (groupsync.start_writeback)."""
        if self._fd is not None:
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def sync(self) -> None:
        """fsync and close the finished temp file (once)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def commit(self, durable: bool = True) -> Path:
        """Link the temp file to its final name (never replacing one) and make it durable.

        durable=False leaves the folder fsync to the caller, who writes the sidecar into the same
        folder next and fsyncs it once for both (one directory fsync per file, not two)."""
        if self._fd is not None:
            raise ValueError("finish() the archive temp file before commit()")
        try:
            os.link(self.temp, self.final)
        except FileExistsError:
            raise IngestError(
                "archive_conflict",
                f"{self.final}: a file appeared at the archive path meanwhile; not overwritten, the source is kept",
            ) from None
        self.committed = True
        os.unlink(self.temp)
        if durable:
            fsync_dir(self.final.parent)
        return self.final

    def abort(self) -> None:
        """Drop the temp file (idempotent); never touches the final name."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        try:
            os.unlink(self.temp)
        except FileNotFoundError:
            return


def write_durably(path: Path, data: bytes, mode: int = 0o640, replace: bool = True, sync_dir: bool = True) -> Path:
    """Write a small file via temp + fsync + rename + folder fsync: readers never see half of it, and it
    survives a crash once this returns (sidecars, rekey markers). With replace=False an existing file at
    `path` is never replaced (FileExistsError). sync_dir=False leaves the folder fsync to the caller
    (its content is durable, its name not yet)."""
    path = Path(path)
    tmp = path.with_name(temp_name(path.name))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)
    return path


def remove_source(path: str | os.PathLike[str]) -> bool:
    """Delete an ingested source after the DB commit; False if it was already gone (rerun)."""
    p = Path(path)
    try:
        os.unlink(p)
    except FileNotFoundError:
        return False
    fsync_dir(p.parent)
    return True


def quarantine_source(src: Path, quarantine: Path, file_name: str) -> Path:
    """Move a failed source to quarantine/<file_name> without overwriting an earlier quarantined copy."""
    dest = Path(quarantine).joinpath(*check_rel(file_name).parts)
    make_dirs(dest.parent, quarantine)
    target = dest
    n = 1
    while target.exists() or target.is_symlink():
        target = dest.with_name(f"{dest.name}.{n}")
        n += 1
    try:
        os.link(src, target)
        os.unlink(src)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP):
            raise
        shutil.move(str(src), str(target))  # other filesystem: copy then delete
    fsync_dir(target.parent)
    return target
