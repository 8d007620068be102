"""The workspace folders (receiving, processing, end_storage, quarantine) and how runs divide them.

A registered file is known by its *file name*: its path relative to receiving, kept unchanged when it
moves to processing (and quarantine), and the `file_name` of manifests and the database. This module
holds the one check of such a name (`check_file_name`), the one listing of a folder (`scan`), the one
move between folders (`move_into`), the seed's formula ``branch + branches*n`` (`share_of`) applied
to positions in a listing (`share`, the static schedule) and to registration numbers (`in_share`,
array tasks), with what Slurm tells a run about itself (`array_share`, `make_job_id`). What a file is called in
end_storage (archive names, temp names) is archive.py's business: it builds on the check here.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import TypeVar

log = logging.getLogger("legampi.workspace")

T = TypeVar("T")

# ---------------------------------------------------------------------- file names
MAX_PATH_BYTES = 4096  # a file name (relative path) in UTF-8: Linux PATH_MAX, a generic bound
MAX_COMPONENT_BYTES = 255  # one path component: NAME_MAX of common file systems, a generic bound
# C0 controls, DEL, C1 controls; a BOM or a line/paragraph separator (invisible, or breaks lines in logs
# and listings); lone surrogates (JSON "\ud800" escapes: not encodable as UTF-8, so no file can have them).
FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ufeff\u2028\u2029\ud800-\udfff]")


class UnsafeName(ValueError):
    """A file name refused by check_file_name; the message says why, callers add where (line, file id)."""


def shown(text: str, limit: int = 80) -> str:
    """repr of TEXT for a message, cut short: a refused 64 MiB name must not become a 64 MiB message."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text.encode('utf-8', 'surrogatepass'))} bytes)"


def forbidden_character(value: str) -> str | None:
    """Why VALUE cannot be shown or stored safely (a control character, a lone surrogate...), or None."""
    m = FORBIDDEN.search(value)
    if m is None:
        return None
    kind = "lone surrogate (not valid UTF-8)" if "\ud800" <= m.group() <= "\udfff" else "character"
    return f"contains the {kind} U+{ord(m.group()):04X} at position {m.start() + 1}"


def check_file_name(name: str, strict: bool = False) -> PurePosixPath:
    """NAME as a relative path that stays inside its folder, or UnsafeName.

    Always refused: an empty name, a NUL byte, an absolute path, a ``..`` component, a name that names
    no file. With strict (registration: what may enter the database) also control characters, white
    space at either end, backslashes and names over the generic length bounds; a name registered under
    these rules passes again unchanged (the returned path drops ``.`` components and repeated slashes).
    """
    if not name:
        raise UnsafeName("empty file name")
    if strict:
        _check_registrable(name)
    elif "\x00" in name:
        raise UnsafeName(f"file name {shown(name)} contains a NUL byte")
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("/"):
        raise UnsafeName(f"file name {shown(name)} is an absolute path; file names are relative to their folder")
    if any(part == ".." for part in p.parts):
        raise UnsafeName(f"file name {shown(name)} contains '..' and could escape its folder")
    if not p.parts or p.name in ("", "."):
        raise UnsafeName(f"file name {shown(name)} names no file")
    if strict:
        for part in p.parts:
            if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
                raise UnsafeName(
                    f"file name {shown(name)} has a component longer than {MAX_COMPONENT_BYTES} bytes: "
                    f"{shown(part, 40)}"
                )
    return p


def _check_registrable(name: str) -> None:
    """The registration-only rules of check_file_name (length, characters, white space, backslash)."""
    nbytes = len(name.encode("utf-8", "surrogatepass")) if len(name) <= MAX_PATH_BYTES else len(name)
    if nbytes > MAX_PATH_BYTES:
        raise UnsafeName(f"file name {shown(name)} is longer than {MAX_PATH_BYTES} bytes")
    problem = forbidden_character(name)
    if problem:
        raise UnsafeName(f"file name {shown(name)} {problem}")
    if name.strip() != name:
        raise UnsafeName(f"file name {shown(name)} has leading or trailing white space")
    if "\\" in name:
        raise UnsafeName(f"file name {shown(name)} contains a backslash")


# ---------------------------------------------------------------------- listing and moving
MOVE_MARKER = ".legampi-move-"  # move_into's temp name across file systems: .<name>.legampi-move-<pid>


def scan(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Regular files under ROOT as (relative POSIX path, lstat); symlinks and special files are skipped."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            it = os.scandir(folder)
        except FileNotFoundError:
            if folder == root:
                raise
            continue  # a subfolder removed while we walk (another job, an operator): nothing to list
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # gone between listing and stat (a live job's short-lived temp file)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(Path(entry.path))
                elif stat.S_ISREG(st.st_mode):
                    yield Path(entry.path).relative_to(root).as_posix(), st
                else:
                    kind = "symbolic link" if stat.S_ISLNK(st.st_mode) else "special file"
                    log.warning("ignoring %s %s (never followed or moved)", kind, entry.path)


def move_into(src: Path, dst: Path) -> None:
    """Rename SRC to DST (folders created); across file systems copy, fsync, rename, then unlink."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(errno.EEXIST, "destination already exists", str(dst))
    try:
        os.rename(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    tmp = dst.with_name(f".{dst.name}{MOVE_MARKER}{os.getpid()}")
    try:
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            shutil.copyfileobj(fin, fout, 4 * 1024 * 1024)
            fout.flush()
            os.fsync(fout.fileno())
        os.rename(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.unlink(src)


# ---------------------------------------------------------------------- dividing the work between runs
def share(items: Iterable[T], branches: int, branch: int, key: Callable[[T], str] | None = None) -> list[T]:
    """The seed's split: item number ``branch + branches*n`` (1-based) of ITEMS sorted (by KEY).

    The static schedule's split of tasks between worker ranks, numbered by position. Array tasks use
    the same formula on a number that does not shift when files are registered (`in_share`)."""
    _check_branch(branches, branch)
    ordered = sorted(items, key=key) if key is not None else sorted(items)  # type: ignore[type-var]
    return [item for i, item in enumerate(ordered, 1) if share_of(i, branches) == branch]


def share_of(file_number: int, branches: int) -> int:
    """The branch (1..BRANCHES) whose share holds number FILE_NUMBER: the design card's formula, file
    number = ``branch + branches*n`` (n = 0, 1, ...), i.e. ``(file_number - branch) % branches == 0``.

    For array tasks the file number is the file's registration number (``file.file_number``), given
    once by the database and never changed: every task puts each file in exactly one share, whenever it
    plans, and registering or archiving other files never moves it (a position in a listing would).
    """
    if branches < 1:
        raise ValueError(f"--branches must be at least 1, got {branches}")
    if file_number < 1:
        raise ValueError(f"file numbers start at 1, got {file_number}")
    return (file_number - 1) % branches + 1


def in_share(file_number: int | None, branches: int, branch: int) -> bool:
    """Whether array task BRANCH of BRANCHES takes the file with registration number FILE_NUMBER
    (`share_of`). An unregistered file (no number) is in branch 1's share alone, so it is reported once."""
    _check_branch(branches, branch)
    if file_number is None:
        return branch == 1
    return share_of(file_number, branches) == branch


def _check_branch(branches: int, branch: int) -> None:
    if branches < 1 or not 1 <= branch <= branches:
        raise ValueError(f"--branch must be between 1 and --branches ({branches}), got {branch}")


def array_share(branches: int | None, branch: int | None, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """--branches/--branch, or the Slurm array task's position ((ID - MIN) / STEP + 1 of COUNT), or all."""
    env = dict(os.environ if env is None else env)
    if branches is not None or branch is not None:
        if branches is None or branch is None:
            raise ValueError("give both --branches and --branch")
        return branches, branch
    if env.get("SLURM_ARRAY_TASK_COUNT") and env.get("SLURM_ARRAY_TASK_ID"):
        count = int(env["SLURM_ARRAY_TASK_COUNT"])
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        step = int(env.get("SLURM_ARRAY_TASK_STEP", "1") or 1)
        offset = int(env["SLURM_ARRAY_TASK_ID"]) - first
        if offset % step or not 0 <= offset // step < count:
            raise ValueError(
                f"array task {env['SLURM_ARRAY_TASK_ID']} is not on the range {first}+{step}*k of "
                f"{count} tasks; use a range like --array=1-{count} or give --branches/--branch"
            )
        return count, offset // step + 1
    return 1, 1


def make_job_id(env: Mapping[str, str] | None = None) -> str:
    """Slurm's job (and array task) id when there is one, else host-pid-time: unique per run.

    It sits beside array_share because both read what the batch system tells this run about itself."""
    env = dict(os.environ if env is None else env)
    if env.get("SLURM_JOB_ID"):
        jid = (
            f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
            if env.get("SLURM_ARRAY_TASK_ID")
            else f"slurm-{env['SLURM_JOB_ID']}"
        )
        return f"{jid}-{int(time.time())}"
    return f"{socket.gethostname()}-{os.getpid()}-{int(time.time())}"
