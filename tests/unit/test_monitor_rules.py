"""Transfer-monitor rules (pure): when a file counts as finished, and how passes are shared out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from legampi.monitor import Decision, Observation, decide, move_into, scan, share

NOW = 1_700_000_000.0


def prev(size: int = 100, mtime: float = NOW - 1000, passes: int = 0) -> dict:
    return {"size": size, "mtime": mtime, "passes": passes}


def test_new_file_is_tracked() -> None:
    assert decide(None, Observation(100, NOW), NOW, 60, 3) == Decision("track", 0)


@pytest.mark.parametrize(
    "obs", [Observation(101, NOW - 1000), Observation(100, NOW - 999.5), Observation(99, NOW - 1000)]
)
def test_size_or_mtime_change_resets(obs: Observation) -> None:
    assert decide(prev(passes=2), obs, NOW, 60, 3) == Decision("reset", 0)


def test_unchanged_but_younger_than_age_limit_waits_without_counting() -> None:
    young = NOW - 10
    assert decide(prev(mtime=young, passes=1), Observation(100, young), NOW, 60, 3) == Decision("wait", 1)
    # a file stamped in the future (clock skew) is young too
    future = NOW + 500
    assert decide(prev(mtime=future), Observation(100, future), NOW, 0, 3) == Decision("wait", 0)


def test_unchanged_and_old_counts_a_pass() -> None:
    assert decide(prev(passes=0), Observation(100, NOW - 1000), NOW, 60, 3) == Decision("pass", 1)
    assert decide(prev(passes=1), Observation(100, NOW - 1000), NOW, 60, 3) == Decision("pass", 2)


def test_age_limit_boundary_counts() -> None:
    assert decide(prev(mtime=NOW - 60), Observation(100, NOW - 60), NOW, 60, 3).action == "pass"


def test_moves_at_pass_limit() -> None:
    assert decide(prev(passes=2), Observation(100, NOW - 1000), NOW, 60, 3) == Decision("move", 3)
    assert decide(prev(passes=0), Observation(100, NOW - 1000), NOW, 0, 1) == Decision("move", 1)


def test_values_read_back_from_a_database_are_compared_as_numbers() -> None:
    row = {"size": "5000000000000", "mtime": "1699999000.25", "passes": "1"}
    assert decide(row, Observation(5_000_000_000_000, 1_699_999_000.25), NOW, 60, 3) == Decision("pass", 2)


def test_a_file_that_keeps_changing_never_moves() -> None:
    row = None
    size, mtime = 0, NOW - 5000
    for step in range(20):
        size += 1024 if step % 2 else 0
        mtime += 0 if step % 2 else 1.0
        d = decide(row, Observation(size, mtime), NOW, 0, 2)
        assert d.action in ("track", "reset")
        row = prev(size, mtime, d.passes)


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
