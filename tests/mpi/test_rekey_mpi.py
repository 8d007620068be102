"""`legampi rekey` under real mpiexec: rank 0 lists and records, the two workers rotate the files."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess

import pytest

from legampi.keys import fingerprint, load_public_key
from tests.conftest import BIN, make_keypair

pytestmark = pytest.mark.mpi
C4GH = str(BIN / "crypt4gh")


def test_rekey_under_mpiexec(workspace):
    ws = workspace
    sizes = [1, 65536, 65537, 100_000, 150_000, 3]
    entries = [ws.add_file(f"DS1/f{i}.bam.c4gh", size) for i, size in enumerate(sizes)]
    ws.legampi("register", str(ws.manifest("DS1", entries)), "--dataset", "DS1")
    ws.mpi(3, "process")
    new_sk, new_pk = make_keypair(ws.root / "keys", "archive2")

    p = ws.mpi(3, "rekey", "--new-archive-public-key", str(new_pk), "--new-archive-secret-key", str(new_sk))
    assert (
        f"{len(sizes)} file(s) to rotate, {len(sizes)} rekeyed, 0 recovered from an interrupted run, 0 failed"
        in p.stdout
    )
    assert {int(m) for m in re.findall(r"\(rank (\d+), ", p.stdout)} == {1, 2}, "both workers rotated files"

    from legampi.config import load
    from legampi.db import Database

    db = Database.connect(load(ws.config).database)
    try:
        rows = {r["file_name"]: r for r in db.files()}
        assert len(db.events(event="rekeyed")) == len(sizes)
    finally:
        db.close()
    fp = fingerprint(load_public_key(new_pk))
    for e in entries:
        path = ws.end_storage / e["name"]
        with open(path, "rb") as fh:
            out = subprocess.run(
                [C4GH, "decrypt", "--sk", str(new_sk)],
                stdin=fh,
                capture_output=True,
                timeout=60,
                env=dict(os.environ, C4GH_PASSPHRASE=""),
            )
        assert out.returncode == 0 and out.stdout == e["plain"], out.stderr
        assert rows[e["name"]]["archive_key"] == fp
        assert rows[e["name"]]["archive_checksum"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "6 ok" in ws.mpi(3, "verify-archive").stdout


def test_rekey_under_mpiexec_skips_a_file_another_live_job_holds(workspace):
    """Issue 14 under mpiexec: the held file is not handed to any worker, exit 5 reaches the launcher."""
    import socket

    from legampi.config import load
    from legampi.db import Database

    ws = workspace
    entries = [ws.add_file(f"DS1/f{i}.bam.c4gh", 1000 + i) for i in range(4)]
    ws.legampi("register", str(ws.manifest("DS1", entries)), "--dataset", "DS1")
    ws.legampi("process")
    held = ws.end_storage / entries[2]["name"]
    before = held.read_bytes()
    db = Database.connect(load(ws.config).database)
    try:
        db.job_start("other-rekey", "rekey", socket.gethostname(), 1)  # alive: this test's pid
        row = next(r for r in db.files() if r["file_name"] == entries[2]["name"])
        db.claim_archived([row["file_id"]], "other-rekey")
        new_sk, new_pk = make_keypair(ws.root / "keys", "archive2")
        p = ws.mpi(3, "rekey", "--new-archive-public-key", str(new_pk), check=False)
        assert p.returncode == 5, p.stdout + p.stderr
        assert "3 rekeyed" in p.stdout and "1 skipped because claimed by another live job" in p.stdout
        assert f"SKIPPED {held}: claimed by job other-rekey (rekey, {socket.gethostname()}" in p.stdout
        assert held.read_bytes() == before
        v = ws.mpi(3, "verify-archive", check=False)
        assert v.returncode == 5 and "3 ok, 0 mismatch, 0 missing, 0 unexpected; 1 skipped" in v.stdout, v.stdout
        assert [c["claimed_by"] for c in db.archived_claims()] == ["other-rekey"]
    finally:
        db.close()
