"""Name limits, checked at `register`: every name legampi derives from a file's name (archive name,
sidecars, rekey marker, temp names, a quarantined copy) must fit the file systems it goes to, so a file
is refused at registration rather than failing hours later in the pipeline."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .archive import TEMP_MARKER, archive_name, check_rel, temp_name
from .workspace import MOVE_MARKER

PID_MAX_LIMIT = 1 << 22  # Linux's ceiling for kernel.pid_max (64-bit): a pid in a temp name has <= 7 digits
SIDECAR_SUFFIXES = (".sha256", ".md5", ".rekey")  # written next to an archive file (checksum, rekey marker)
QUARANTINE_SUFFIX = ".99999"  # quarantine_source appends .N to keep earlier copies; room for 99999 of them


@dataclass(frozen=True)
class FsLimits:
    """A workspace folder and what its file system allows (None: no limit reported)."""

    folder: str  # absolute path, as legampi builds paths in it
    name_max: int | None  # bytes per path component
    path_max: int | None  # bytes per path, including the terminating NUL


def fs_limits(folder: str | os.PathLike[str]) -> FsLimits:
    """Ask the file system of FOLDER (or of its nearest existing parent) for its name and path limits."""
    path = Path(folder).absolute()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent

    def ask(key: str) -> int | None:
        try:
            value = os.pathconf(probe, key)
        except (OSError, ValueError):  # the file system has no such limit
            return None
        return value if value > 0 else None

    return FsLimits(str(path), ask("PC_NAME_MAX"), ask("PC_PATH_MAX"))


def _short(name: str) -> str:
    """A long name for a message: its start and end (a 64 KiB name must not flood the terminal)."""
    return name if len(name) <= 80 else f"{name[:40]}...{name[-20:]}"


def _longest_temp(final: str) -> str:
    """temp_name(final) with the longest possible pid in it (the name's length is what matters)."""
    return temp_name(final).replace(f"{TEMP_MARKER}{os.getpid()}-", f"{TEMP_MARKER}{PID_MAX_LIMIT}-", 1)


def _nbytes(name: str) -> int:
    return len(os.fsencode(name))


def name_limits_problem(
    file_name: str,
    extensions: tuple[str, ...] | list[str],
    processing: FsLimits,
    end_storage: FsLimits,
    quarantine: FsLimits | None = None,
    arch_name: str | None = None,
) -> str | None:
    """Why REL can never be archived within these file systems' limits, or None when every name legampi
    derives from it fits: the source and monitor's move temp in processing; the archive name, its
    sidecars and rekey marker and the temp names of all of them in end_storage; a quarantined copy.
    ARCH_NAME: archive_name(file_name, extensions) when the caller has it already."""
    src = check_rel(file_name)
    arch = PurePosixPath(arch_name if arch_name is not None else archive_name(file_name, extensions))
    leaf = arch.name
    derived = [leaf, *(leaf + s for s in SIDECAR_SUFFIXES)]
    before, after = _longest_temp("\x00").split("\x00")  # one temp name, not one per derived name
    places = [
        ("processing", processing, src.parent, [src.name, f".{src.name}{MOVE_MARKER}{PID_MAX_LIMIT}"]),
        # each temp name is longer than the name it stands for: the longest derived name's temp is the longest
        ("end_storage", end_storage, arch.parent, [before + max(derived, key=_nbytes) + after]),
    ]
    if quarantine is not None:
        places.append(("quarantine", quarantine, src.parent, [src.name + QUARANTINE_SUFFIX]))
    for label, fs, parent, names in places:
        dirs = [] if str(parent) == "." else list(parent.parts)
        longest = max(names, key=_nbytes)
        for part in [*dirs, longest]:
            n = _nbytes(part)
            if fs.name_max is not None and n > fs.name_max:
                what = "folder name" if part in dirs else "longest name legampi derives from it"
                return (
                    f"{_short(file_name)!r}: too long for the file system of {label} "
                    f"({fs.folder}): the {what} ({_short(part)!r}) is {n} bytes, it allows {fs.name_max}; "
                    f"shorten it by at least {n - fs.name_max} bytes"
                )
        full = len(os.fsencode(os.path.join(fs.folder, *dirs, longest))) + 1  # + the terminating NUL
        if fs.path_max is not None and full > fs.path_max:
            return (
                f"{_short(file_name)!r}: path too long for the file system of {label} "
                f"({fs.folder}): {full} bytes with the longest name legampi derives, it allows {fs.path_max}; "
                f"shorten it by at least {full - fs.path_max} bytes"
            )
    return None
