"""`legampi process` with its ranks on three hosts (network namespaces of the bed), on both backends.

What a cluster adds to the one-host tests: ranks that cannot reach each other's loopback or abstract
Unix sockets (the doorbell), report different host names, and reach the database over the network;
the filesystem is shared, as a cluster's parallel filesystem is.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import pytest

from legampi.formats.legacy_aes import encrypt_stream as cip_encrypt
from tests.conftest import Workspace
from tests.faults.conftest import assert_safe, connect, register
from tests.multihost.bed import Bed
from tests.multihost.conftest import run_mpi

pytestmark = pytest.mark.multihost

PASSWORD = "multihost legacy password"


def mixed_dataset(ws: Workspace, dataset: str = "MIX") -> list[dict[str, Any]]:
    """Crypt4GH, legacy AES (.cip) and plain files of mixed sizes (empty, one segment +-1, a few MB)."""
    import hashlib

    (ws.root / "keys" / "legacy.pw").write_text(PASSWORD + "\n", encoding="utf-8")
    with open(ws.config, "a", encoding="utf-8") as fh:  # [crypto] is the config's last section
        fh.write(f"legacy_password_file = {ws.root / 'keys' / 'legacy.pw'}\n")
    entries: list[dict[str, Any]] = []
    sizes = [0, 1, 65535, 65536, 65537, 300_000, 1_500_000, 3_000_000, 123_456, 777]
    for i, size in enumerate(sizes):
        entries.append(ws.add_file(f"{dataset}/c4gh/f{i:02d}.bam.c4gh", size))
    for i, size in enumerate([0, 70_000, 2_000_000, 5]):
        plain = os.urandom(size)
        rel = f"{dataset}/cip/g{i:02d}.bam.cip"
        path = ws.processing / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(cip_encrypt([plain], PASSWORD, "aes128")))
        e = {"name": rel, "md5": hashlib.md5(plain).hexdigest(), "sha256": hashlib.sha256(plain).hexdigest()}
        entries.append({**e, "size": path.stat().st_size, "plain": plain})
    for i, size in enumerate([10, 400_000]):
        entries.append(ws.add_file(f"{dataset}/plain/p{i:02d}.bam", size, fmt="plain"))
    register(ws, dataset, entries)
    return entries


def test_hosts_are_hosts(bed: Bed) -> None:
    """Each host reports its own name; MPI ranks on different hosts talk TCP over the veth network
    (checked from the ranks' own sockets: /proc/self/net/tcp is per network namespace)."""
    for h in bed.hosts:
        p = bed.run(h, [sys.executable, "-c", "import socket; print(socket.gethostname())"], check=True)
        assert p.stdout.strip() == h.name
    probe = os.path.join(os.path.dirname(__file__), "probe_mpi.py")
    from tests.conftest import MPIEXEC

    p = subprocess.run(
        [MPIEXEC, *bed.mpiexec_args(), "-n", "4", sys.executable, probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    lines = dict(line.split(" ", 1) for line in p.stdout.strip().splitlines())
    hosts = {int(r): v.split()[0] for r, v in lines.items()}
    assert hosts == {0: bed.names[0], 1: bed.names[1], 2: bed.names[2], 3: bed.names[0]}, p.stdout
    addr = {h.name: h.addr for h in bed.hosts}
    for r in (1, 2):  # rank 0 <-> rank r crosses hosts: a TCP connection between the two veth addresses
        peers = set(lines[str(r)].split()[1:])
        assert addr[bed.names[0]] in peers, f"rank {r} has no TCP connection to {bed.names[0]}: {p.stdout}"


@pytest.mark.parametrize("n", [4])
def test_mixed_dataset_across_hosts(bed: Bed, mh_workspace: Workspace, n: int) -> None:
    ws = mh_workspace
    entries = mixed_dataset(ws)
    p = run_mpi(bed, ws, n, "process")
    assert f"{len(entries)} file(s), {len(entries)} available, 0 failed" in p.stdout, p.stdout + p.stderr
    assert_safe(ws, entries, complete=True)
    # ranks 1..3 did the work, on the hosts hydra placed them on, each reporting its own host name
    on = dict(re.findall(r" rank (\d+) on (\S+):", p.stdout))
    assert on == {"1": bed.names[1], "2": bed.names[2], "3": bed.names[0]}, p.stdout
    db = connect(ws)
    try:
        job = db.jobs(1)[0]
        assert job["host"] == bed.names[0] and job["exit_status"] == 0, job
    finally:
        db.close()
    ws.legampi("verify-archive")
