"""The short chaos run of CI: tests/chaos.py with 10 SIGKILLs that land in flight, on each backend.

The script is run as a separate process, exactly as documented in docs/chaos.md, because it makes
itself a child subreaper to keep every rank it starts (see tests/chaos_procs.py), which a pytest
process should not become. The seed is random unless LEGAMPI_CHAOS_SEED is set; it is printed first
and in every failure message, and `python tests/chaos.py --seed N` replays the same schedule.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.mpi
SCRIPT = Path(__file__).resolve().parent.parent / "chaos.py"
KILLS = 10
TIMEOUT = 170  # seconds per backend; a run takes about 30-40 s on a loaded 2-core machine


def _run(backend: str) -> tuple[int, str]:
    cmd = [sys.executable, str(SCRIPT), "--kills", str(KILLS), "--backend", backend, "--large-mb", "2-16"]
    if os.environ.get("LEGAMPI_CHAOS_SEED"):
        cmd += ["--seed", os.environ["LEGAMPI_CHAOS_SEED"]]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)  # the script kills what it started and removes its workspace
        try:
            out, _ = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        raise AssertionError(f"chaos run on {backend} did not end within {TIMEOUT}s:\n{out[-6000:]}") from None
    return p.returncode, out


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_chaos_short(backend: str) -> None:
    rc, out = _run(backend)
    print("\n".join(line for line in out.splitlines() if line.startswith(("chaos seed", "RESULT"))))  # for -rP
    m = re.search(r"chaos seed (\d+)", out)
    seed = m.group(1) if m else "?"
    where = f"(replay: python tests/chaos.py --kills {KILLS} --backend {backend} --large-mb 2-16 --seed {seed})"
    assert rc == 0, f"chaos run on {backend} exited {rc} {where}:\n{out[-12000:]}"
    m = re.search(
        r"^RESULT backend=(\S+) kills=(\d+) .*lost=(\d+) duplicated=(\d+) corrupt=(\d+) unfinished=(\d+) "
        r"other=(\d+) loop_findings=(\d+)",
        out,
        re.M,
    )
    assert m, f"no RESULT line {where}:\n{out[-4000:]}"
    assert m.group(1) == backend
    assert int(m.group(2)) >= KILLS, f"only {m.group(2)} kills landed in flight {where}"
    kinds = ("lost", "duplicated", "corrupt", "unfinished", "other", "loop_findings")
    counts = dict(zip(kinds, m.groups()[2:], strict=True))
    assert set(counts.values()) == {"0"}, f"{counts} {where}"
    for target in ("rank0", "worker", "mpiexec", "recover"):
        assert f"'{target}': " in out.split("RESULT", 1)[1].splitlines()[0], f"no kill of {target} {where}"


def test_audit_finds_each_kind_of_damage(workspace) -> None:
    """The audit is what makes the chaos run able to fail: damage of each kind must show in it."""
    from tests.chaos_audit import run_audit
    from tests.faults.conftest import add_files, connect

    ws = workspace
    entries = add_files(ws, "f", 6, 70_000)
    out = ws.mpi(3, "process").stdout
    job = re.search(r"^job (\S+): ", out, re.M).group(1)  # type: ignore[union-attr]
    registered = {e["name"]: {"md5": e["md5"], "sha256": e["sha256"]} for e in entries}
    clean = run_audit(ws, registered, job)
    assert clean.ok and clean.available == 6, "\n".join(clean.lines())

    arch = {e["name"]: ws.end_storage / e["name"] for e in entries}
    data = bytearray(arch["f00.bam.c4gh"].read_bytes())
    data[-5] ^= 1  # a flipped bit in the last payload block
    arch["f00.bam.c4gh"].write_bytes(bytes(data))
    arch["f01.bam.c4gh"].unlink()  # archived copy gone, source gone: lost
    db = connect(ws)
    try:
        with db.transaction():
            db.execute(
                "INSERT INTO file_event (file_id, dataset_id, event, status, job_id, at) "
                "VALUES ('f02.bam.c4gh', 'DS1', 'available', 'available', 'again', '2030-01-01T00:00:00')"
            )
            db.execute("UPDATE file SET status = 'processing', claimed_by = 'ghost' WHERE file_id = 'f03.bam.c4gh'")
    finally:
        db.close()
    (ws.end_storage / ".f04.bam.c4gh.legampi-tmp-123-abcdef012345").write_bytes(b"x")
    (ws.end_storage / "stray.bin").write_bytes(b"y")
    (ws.processing / "f05.bam.c4gh").write_bytes(b"a source back in processing")

    a = run_audit(ws, {**registered, "never.bam.c4gh": {"md5": "0" * 32, "sha256": "0" * 64}}, job)
    text = "\n".join(a.lines())
    assert not a.ok
    assert any("f00.bam.c4gh" in x and "decrypt" in x for x in a.corrupt), text
    assert any("f00.bam.c4gh" in x and "sha256sum -c" in x for x in a.corrupt), text
    assert any(x.startswith("f01.bam.c4gh") for x in a.lost), text
    assert any(x.startswith("never.bam.c4gh") for x in a.lost), text
    assert any(x.startswith("f02.bam.c4gh: 2 `available` events") for x in a.duplicated), text
    assert any(x.startswith("f03.bam.c4gh: status processing") for x in a.unfinished), text
    assert any("claimed by ghost" in x and "no job has that id" in x for x in a.other), text
    assert any("temp file left" in x and "f04" in x for x in a.other), text
    assert any("unexpected file" in x and "stray.bin" in x for x in a.other), text
    assert any("f05.bam.c4gh: available but its source is still in processing" in x for x in a.other), text
