"""Transfer-monitor rules (pure): when a file counts as finished (the share of a pass: test_workspace)."""

from __future__ import annotations

import pytest

from legampi.monitor import Decision, Observation, decide

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
