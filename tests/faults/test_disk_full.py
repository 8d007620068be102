"""end_storage runs out of space: the file fails as `nospace`, nothing half-written stays, the source stays,
and once there is room `process --retry-failed` archives it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.faults.conftest import all_files, assert_safe, register, status_json


def _mount(folder: Path, size: str, remount: bool = False) -> None:
    opts = f"remount,size={size}" if remount else f"size={size},mode=0750"
    cmd = ["mount", "-o", opts, str(folder)] if remount else ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({' '.join(cmd)}): {p.stderr.strip()}")


@pytest.fixture
def small_end_storage(workspace, request: pytest.FixtureRequest):
    _mount(workspace.end_storage, "2m")

    def unmount() -> None:
        subprocess.run(["umount", str(workspace.end_storage)], check=True)

    request.addfinalizer(unmount)
    return workspace


def test_end_storage_full(small_end_storage) -> None:
    ws = small_end_storage
    big = ws.add_file("big.bam.c4gh", 3 << 20)
    small = ws.add_file("small.bam.c4gh", 200_000)
    register(ws, "DS1", [big, small])
    p = ws.mpi(3, "process", check=False)
    assert p.returncode == 1, f"{p.stdout}\n{p.stderr}"
    files = {f["file_name"]: f for f in status_json(ws)["files"]}
    assert files["big.bam.c4gh"]["status"] == "failed"
    assert "no space left on device" in files["big.bam.c4gh"]["error"], files["big.bam.c4gh"]
    # The small file streams at the same time on the other worker: it fits unless the big one's temp file
    # held the space at that moment, in which case it fails cleanly the same way.
    small_row = files["small.bam.c4gh"]
    assert small_row["status"] == "available" or (
        small_row["status"] == "failed" and "no space left on device" in small_row["error"]
    ), small_row
    assert any(" ERROR " in line and "big.bam.c4gh" in line and "no space" in line for line in p.stderr.splitlines()), (
        p.stderr
    )
    left = sorted(x.name for x in all_files(ws.end_storage))
    verified = ["small.bam.c4gh", "small.bam.c4gh.sha256"] if small_row["status"] == "available" else []
    assert left == verified, f"end_storage holds more than verified files: {left}"
    assert (ws.processing / "big.bam.c4gh").is_file(), "source of the file that did not fit is gone"
    assert_safe(ws, [big, small])

    _mount(ws.end_storage, "16m", remount=True)
    again = ws.mpi(3, "process", "--retry-failed")
    assert f"{1 if verified else 2} available, 0 failed" in again.stdout, again.stdout
    assert_safe(ws, [big, small], complete=True)
