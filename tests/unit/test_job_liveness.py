"""When is a job dead (its claims released, its row marked `died`)? From any host, without waiting an hour."""

from __future__ import annotations

import pytest

from legampi import recovery
from legampi.db import Database

OLD, MID, NEW = "2026-01-01T00:00:00+00:00", "2026-01-01T00:05:00+00:00", "2026-01-01T00:10:00+00:00"


def job(host: str = "other", beat: str = NEW, job_id: str = "slurm-42-1") -> dict:
    return {"job_id": job_id, "host": host, "pid": 123, "heartbeat_at": beat}


def test_same_host_dead_pid_is_dead_at_once() -> None:
    assert recovery.job_is_dead(job(host="me"), "me", lambda pid: False, cutoff=OLD)
    assert not recovery.job_is_dead(job(host="me"), "me", lambda pid: True, cutoff=OLD)


def test_other_host_by_heartbeat_only() -> None:
    assert recovery.job_is_dead(job(beat=OLD), "me", lambda pid: True, cutoff=MID)
    assert not recovery.job_is_dead(job(beat=NEW), "me", lambda pid: True, cutoff=MID)


@pytest.mark.parametrize(
    ("gone", "beat", "dead"), [(True, OLD, True), (True, NEW, False), (False, OLD, False), (None, OLD, False)]
)
def test_slurm_gone_counts_once_two_beats_are_missed(gone: bool | None, beat: str, dead: bool) -> None:
    """Slurm's word frees a claim from any host, but only after two missed beats (squeue may be another
    cluster's, or slow to list a job that just started)."""
    asked = []

    def slurm_gone(job_id: str) -> bool | None:
        asked.append(job_id)
        return gone

    got = recovery.job_is_dead(job(beat=beat), "me", lambda pid: True, cutoff=OLD, slurm_gone=slurm_gone, grace=MID)
    assert got is dead
    assert asked == (["slurm-42-1"] if beat < MID else [])


def test_claim_rows_name_their_job_by_claimed_by() -> None:
    row = {"claimed_by": "slurm-7_3-99", "host": "other", "pid": 1, "heartbeat_at": OLD}
    seen = []
    recovery.job_is_dead(row, "me", lambda pid: True, cutoff=OLD, slurm_gone=lambda j: seen.append(j), grace=MID)
    assert seen == ["slurm-7_3-99"]


def test_slurm_job_gone_reads_squeue(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in squeue on PATH: known jobs print a state, finished ones nothing, purged ones an error."""
    squeue = tmp_path / "squeue"
    squeue.write_text(
        '#!/bin/sh\ncase "$5" in\n 1) echo RUNNING;;\n 2) ;;\n 3) echo \'slurm_load_jobs error: Invalid job id '
        "specified' >&2; exit 1;;\n *) echo 'Unable to contact slurm controller' >&2; exit 1;;\nesac\n"
    )
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert recovery.slurm_job_gone("slurm-1-5") is False
    assert recovery.slurm_job_gone("slurm-2-5") is True
    assert recovery.slurm_job_gone("slurm-3-5") is True
    assert recovery.slurm_job_gone("slurm-4-5") is None  # controller down: cannot tell
    assert recovery.slurm_job_gone("vm-123-5") is None  # not a Slurm job


def test_cutoff_is_comparable_with_stored_times() -> None:
    assert Database.cutoff(60) > OLD
