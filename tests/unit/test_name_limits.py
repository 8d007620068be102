"""namelimits.name_limits_problem: the longest name it accepts is the longest whose derived names (archive
name, sidecars, temp names with the largest pid) the real file system accepts, and one byte more is refused."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from legampi import archive, namelimits
from legampi.namelimits import FsLimits, fs_limits, name_limits_problem

EXTS = (".c4gh", ".cip", ".gpg")


def longest_accepted(make_rel, proc: FsLimits, end: FsLimits) -> int:
    n = 1
    while name_limits_problem(make_rel(n + 1), EXTS, proc, end) is None:
        n += 1
    return n


@pytest.mark.parametrize("suffix", [".c4gh", ".gpg", ""])
def test_the_boundary_is_the_file_systems_own(tmp_path: Path, suffix: str) -> None:
    proc_dir, end_dir = tmp_path / "processing", tmp_path / "end"
    proc_dir.mkdir()
    end_dir.mkdir()
    proc, end = fs_limits(proc_dir), fs_limits(end_dir)
    assert end.name_max and end.path_max

    def rel(n: int) -> str:
        return "n" * n + suffix

    n = longest_accepted(rel, proc, end)
    final = Path(archive.archive_name(rel(n), EXTS)).name
    # every name legampi derives fits on the real file system...
    for name in (final, final + ".sha256", namelimits._longest_temp(final + ".sha256")):
        (end_dir / name).write_bytes(b"")
    (proc_dir / rel(n)).write_bytes(b"")
    # ...and one byte more would make the longest of them impossible
    longer = namelimits._longest_temp(Path(archive.archive_name(rel(n + 1), EXTS)).name + ".sha256")
    with pytest.raises(OSError) as exc:
        (end_dir / longer).write_bytes(b"")
    assert exc.value.errno == errno.ENAMETOOLONG
    problem = name_limits_problem(rel(n + 1), EXTS, proc, end)
    assert problem is not None and f"it allows {end.name_max}" in problem and "by at least 1 bytes" in problem


def test_folders_quarantine_and_paths_are_checked(tmp_path: Path) -> None:
    lim = FsLimits("/p", 255, 4096)
    wide = FsLimits("/w", 1000, 4096)
    assert "folder name" in name_limits_problem("d" * 256 + "/x.c4gh", EXTS, lim, lim)
    # quarantine adds .N to the source name
    q = name_limits_problem("q" * 250 + ".bam", (), wide, wide, quarantine=lim)
    assert q is not None and "file system of quarantine (/p)" in q
    assert name_limits_problem("q" * 240 + ".bam", (), wide, wide, quarantine=lim) is None
    short_paths = FsLimits("/e", 255, len("/e/a/b/.c.c4gh.sha256.legampi-tmp-4194304-0123456789ab") + 1)
    assert name_limits_problem("a/b/c.c4gh", EXTS, lim, short_paths) is None
    short_paths = FsLimits("/e", 255, short_paths.path_max - 1)
    p = name_limits_problem("a/b/c.c4gh", EXTS, lim, short_paths)
    assert p is not None and "path too long for the file system of end_storage" in p
    assert name_limits_problem("a/b/c.c4gh", EXTS, lim, FsLimits(str(tmp_path), None, None)) is None


def test_limits_of_a_folder_not_yet_created_come_from_its_parent(tmp_path: Path) -> None:
    assert fs_limits(tmp_path / "not" / "yet") == FsLimits(
        str(tmp_path / "not" / "yet"), os.pathconf(tmp_path, "PC_NAME_MAX"), os.pathconf(tmp_path, "PC_PATH_MAX")
    )


def test_the_pid_bound_covers_this_kernel() -> None:
    with open("/proc/sys/kernel/pid_max") as f:
        assert int(f.read()) <= namelimits.PID_MAX_LIMIT
    assert str(os.getpid()) not in namelimits._longest_temp("x") or os.getpid() == namelimits.PID_MAX_LIMIT
