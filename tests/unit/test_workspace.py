"""workspace.py: the one file-name check, listing and moving, and the seed's share between runs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from legampi import archive, manifest
from legampi.formats import IngestError
from legampi.manifest import ManifestError
from legampi.workspace import (
    UnsafeName,
    array_share,
    check_file_name,
    in_share,
    make_job_id,
    move_into,
    scan,
    share,
    share_of,
)

# ---------------------------------------------------------------------- the share formula


def test_share_follows_the_seed_formula_one_based() -> None:
    items = [f"f{i:02d}" for i in range(1, 11)]
    shuffled = items[::-1]
    assert share(shuffled, 3, 1) == ["f01", "f04", "f07", "f10"]
    assert share(shuffled, 3, 2) == ["f02", "f05", "f08"]
    assert share(shuffled, 3, 3) == ["f03", "f06", "f09"]
    assert share(shuffled, 1, 1) == items
    assert share(items, 20, 11) == []


@pytest.mark.parametrize("branches", [1, 2, 3, 7])
def test_shares_are_disjoint_and_complete(branches: int) -> None:
    items = [f"d/{i}" for i in range(23)]
    parts = [share(items, branches, k) for k in range(1, branches + 1)]
    assert sorted(x for p in parts for x in p) == sorted(items)
    assert sum(len(p) for p in parts) == len(items)


@pytest.mark.parametrize(("branches", "branch"), [(3, 0), (3, 4), (0, 1), (2, -1)])
def test_share_refuses_a_branch_outside_1_to_n(branches: int, branch: int) -> None:
    with pytest.raises(ValueError, match="--branch must be between 1 and --branches"):
        share(["a"], branches, branch)


@pytest.mark.parametrize("n", [0, 1, 2, 5, 6, 7, 31])
@pytest.mark.parametrize("branches", [1, 2, 3, 5])
def test_every_item_exactly_once_at_its_one_based_number(n: int, branches: int) -> None:
    items = [f"{i:03d}" for i in range(1, n + 1)]  # item number i (1-based) is f"{i:03d}"
    owner = {x: b for b in range(1, branches + 1) for x in share(items[::-1], branches, b)}
    assert sorted(owner) == items
    assert sum(len(share(items, branches, b)) for b in range(1, branches + 1)) == n
    assert all(owner[x] == (int(x) - 1) % branches + 1 for x in items)  # number branch + branches*k


def test_share_by_key_splits_tasks_like_names() -> None:
    tasks = [{"name": f"f{i}"} for i in (3, 1, 2, 4)]
    assert [t["name"] for t in share(tasks, 2, 1, key=lambda t: t["name"])] == ["f1", "f3"]
    assert [t["name"] for t in share(tasks, 2, 2, key=lambda t: t["name"])] == ["f2", "f4"]


@pytest.mark.parametrize("branches", [1, 2, 3, 7])
def test_array_shares_follow_the_formula_are_disjoint_and_cover_every_file(branches: int) -> None:
    """Task `branch` takes file numbers branch + branches*n (n = 0, 1, ...): every file once, shares even."""
    numbers = range(1, 301)
    shares = {b: [i for i in numbers if in_share(i, branches, b)] for b in range(1, branches + 1)}
    assert sorted(x for s in shares.values() for x in s) == list(numbers)  # union = all, none twice
    for b, mine in shares.items():
        assert mine == list(range(b, 301, branches))  # branch + branches*n
        assert all(share_of(i, branches) == b and (i - b) % branches == 0 for i in mine)
    assert max(map(len, shares.values())) - min(map(len, shares.values())) <= 1


def test_a_file_keeps_its_share_whatever_is_registered_or_archived_in_between() -> None:
    """Issue 17: a share by listing position moves when a file is registered between two tasks' plans;
    by registration number it does not: a later file gets a higher number, whatever its name."""
    first = {f"ds/{i:02d}": i for i in range(1, 14)}  # name -> file_number
    before = {n: share_of(k, 3) for n, k in first.items()}
    later = {**first, "ds/00-new": 14, "ds/05a-new": 15, "ds/99-new": 16}  # registered between two plans
    assert {n: share_of(later[n], 3) for n in first} == before
    assert all(sum(in_share(k, 3, b) for b in (1, 2, 3)) == 1 for k in later.values())
    # by position (the seed's formula over all registered names) a file would change task: the old way
    moved = [n for n in first if n not in share(later, 3, next(b for b in (1, 2, 3) if n in share(first, 3, b)))]
    assert moved, "the positional share would have shifted"


def test_unregistered_files_go_to_branch_one_only_and_one_branch_takes_all() -> None:
    assert [b for b in (1, 2, 3) if in_share(None, 3, b)] == [1]
    assert in_share(1, 1, 1) and in_share(7, 1, 1) and in_share(None, 1, 1)
    with pytest.raises(ValueError, match="--branch must be between 1 and --branches"):
        in_share(1, 3, 4)
    with pytest.raises(ValueError, match="file numbers start at 1"):
        share_of(0, 3)


# ---------------------------------------------------------------------- array shares and job ids


def test_array_share_prefers_the_options_and_wants_both() -> None:
    env = {"SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_ID": "2"}
    assert array_share(3, 2, env) == (3, 2)
    for branches, branch in ((3, None), (None, 2)):
        with pytest.raises(ValueError, match="give both --branches and --branch"):
            array_share(branches, branch, env)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (1, 1)),
        ({"SLURM_ARRAY_TASK_ID": "3"}, (1, 1)),  # no count: not an array we can place
        ({"SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "1"}, (4, 1)),
        ({"SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1"}, (4, 4)),
        ({"SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_ID": "0"}, (4, 1)),  # MIN defaults to 0
        (
            {
                "SLURM_ARRAY_TASK_COUNT": "3",
                "SLURM_ARRAY_TASK_ID": "16",
                "SLURM_ARRAY_TASK_MIN": "10",
                "SLURM_ARRAY_TASK_STEP": "3",
            },
            (3, 3),
        ),
        (
            {
                "SLURM_ARRAY_TASK_COUNT": "2",
                "SLURM_ARRAY_TASK_ID": "6",
                "SLURM_ARRAY_TASK_MIN": "5",
                "SLURM_ARRAY_TASK_STEP": "",
            },
            (2, 2),
        ),
    ],
)
def test_array_share_from_slurm(env: dict[str, str], expected: tuple[int, int]) -> None:
    assert array_share(None, None, env) == expected


@pytest.mark.parametrize(
    "task",
    [
        {"SLURM_ARRAY_TASK_ID": "11"},  # between steps
        {"SLURM_ARRAY_TASK_ID": "19"},  # past the last of 3 tasks
        {"SLURM_ARRAY_TASK_ID": "7"},  # before the first
    ],
)
def test_array_share_refuses_a_task_off_the_range(task: dict[str, str]) -> None:
    env = {"SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_STEP": "3", **task}
    with pytest.raises(ValueError, match=r"is not on the range 10\+3\*k of 3 tasks"):
        array_share(None, None, env)


def test_job_ids_name_the_slurm_job_or_the_host_and_process() -> None:
    assert re.fullmatch(r"slurm-77-\d+", make_job_id({"SLURM_JOB_ID": "77"}))
    array = {"SLURM_JOB_ID": "80", "SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3"}
    assert re.fullmatch(r"slurm-77_3-\d+", make_job_id(array))
    assert f"-{os.getpid()}-" in make_job_id({})


# ---------------------------------------------------------------------- the one path validator

ALWAYS_REFUSED = [
    ("", "empty file name"),
    ("/etc/passwd", "is an absolute path"),
    ("//x", "is an absolute path"),
    ("..", "contains '..'"),
    ("../x.c4gh", "contains '..'"),
    ("a/../../x.c4gh", "contains '..'"),
    (".", "names no file"),
    ("./", "names no file"),
    ("a\x00b", "'a\\x00b' contains"),  # the NUL shown escaped, never raw
]
REFUSED_AT_REGISTRATION = [
    ("a\x01b", "U+0001"),
    ("a\x7fb", "U+007F"),
    ("a\x9fb", "U+009F"),
    ("a\u2028b", "U+2028"),
    ("a\ud800b", "lone surrogate"),
    (" lead.c4gh", "white space"),
    ("trail.c4gh ", "white space"),
    ("back\\slash", "backslash"),
    ("x" * 256, "component longer than 255 bytes"),
    ("d/" + "\u00e9" * 128, "component longer than 255 bytes"),  # 256 bytes in UTF-8
    ("a/" * 2049, "longer than 4096 bytes"),
]


@pytest.mark.parametrize(("name", "why"), ALWAYS_REFUSED + REFUSED_AT_REGISTRATION)
def test_registration_refuses(name: str, why: str) -> None:
    with pytest.raises(UnsafeName, match=re.escape(why)):
        check_file_name(name, strict=True)


@pytest.mark.parametrize(("name", "why"), ALWAYS_REFUSED)
def test_the_pipeline_refuses_what_could_leave_its_folder(name: str, why: str) -> None:
    with pytest.raises(UnsafeName, match=re.escape(why)):
        check_file_name(name)


@pytest.mark.parametrize(("name", "why"), REFUSED_AT_REGISTRATION)
def test_the_pipeline_leaves_registration_bounds_to_register(name: str, why: str) -> None:
    """Names registered before those bounds existed must still be processed (behaviour unchanged)."""
    if "\x00" not in name and not name.startswith("/"):
        assert check_file_name(name).parts


def test_accepted_names_are_normalised() -> None:
    assert check_file_name("a/b/c d/\u00fc.c4gh", strict=True).as_posix() == "a/b/c d/\u00fc.c4gh"
    assert check_file_name("./a//b/./c.c4gh", strict=True).as_posix() == "a/b/c.c4gh"
    assert check_file_name("a/./b").as_posix() == "a/b"


def test_long_names_are_shown_short() -> None:
    with pytest.raises(UnsafeName) as info:
        check_file_name("x" * 70_000, strict=True)
    assert len(str(info.value)) < 200 and "70000 bytes" in str(info.value)


def test_both_faces_report_the_one_validators_refusals() -> None:
    """manifest names the line (ManifestError); the pipeline reports the failure kind `unsafe_path`."""
    for name, why in ALWAYS_REFUSED:
        with pytest.raises(ManifestError) as m:
            manifest.safe_file_name(name, "DS.tab:7")
        assert str(m.value).startswith("DS.tab:7: ") and why in str(m.value)
        with pytest.raises(IngestError) as i:
            archive.check_rel(name)
        assert i.value.kind == "unsafe_path" and why in str(i.value)


# ---------------------------------------------------------------------- listing and moving


def test_scan_lists_regular_files_only_and_never_follows_links(tmp_path: Path) -> None:
    root = tmp_path / "receiving"
    deep = root / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "x y \u00e9.c4gh").write_bytes(b"1")
    (root / "top.c4gh").write_bytes(b"22")
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "secret.c4gh").write_bytes(b"333")
    (outside / "sub" / "inner.c4gh").write_bytes(b"4444")
    (root / "link.c4gh").symlink_to(outside / "secret.c4gh")
    (root / "linkdir").symlink_to(outside / "sub")
    os.mkfifo(root / "pipe.c4gh")
    found = dict(scan(root))
    assert sorted(found) == ["a/b/c/x y \u00e9.c4gh", "top.c4gh"]
    assert found["top.c4gh"].st_size == 2


def test_scan_of_a_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(scan(tmp_path / "absent"))


def test_move_into_keeps_relative_path_and_refuses_to_overwrite(tmp_path: Path) -> None:
    src = tmp_path / "r" / "a" / "b" / "c" / "f.c4gh"
    src.parent.mkdir(parents=True)
    src.write_bytes(b"data")
    dst = tmp_path / "p" / "a" / "b" / "c" / "f.c4gh"
    move_into(src, dst)
    assert dst.read_bytes() == b"data" and not src.exists()
    src.write_bytes(b"second copy")
    with pytest.raises(FileExistsError):
        move_into(src, dst)
    assert dst.read_bytes() == b"data" and src.read_bytes() == b"second copy"
