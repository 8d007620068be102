"""A transfer damaged after EGA took its checksum, through the real `mpiexec legampi process`: the file
fails alone as `transfer_corrupt`, nothing of it is archived, its source stays, and intact files (with or
without a registered transfer checksum) are archived."""

from __future__ import annotations

import hashlib

from tests.faults.conftest import connect, events, register, rows_by_name


def test_damaged_transfer_fails_alone_as_transfer_corrupt(workspace) -> None:
    ws = workspace
    intact = ws.add_file("intact.bam.c4gh", 150_000)
    plain = ws.add_file("no-transfer-checksum.bam.c4gh", 90_000)
    damaged = ws.add_file("damaged.bam.c4gh", 200_000)
    register(ws, "DS1", [intact, plain, damaged])
    sent = {e["name"]: (ws.processing / e["name"]).read_bytes() for e in (intact, damaged)}
    db = connect(ws)
    for name, content in sent.items():  # as the EGA manifest's checksum/checksumType would give them
        db.execute(
            "UPDATE file SET transfer_checksum = ?, transfer_checksum_type = 'sha256' WHERE file_name = ?",
            (hashlib.sha256(content).hexdigest(), name),
        )
    db.close()
    path = ws.processing / "damaged.bam.c4gh"
    raw = bytearray(sent["damaged.bam.c4gh"])
    raw[100_000] ^= 0x04  # the network flipped a bit after the checksum was taken
    path.write_bytes(bytes(raw))

    p = ws.mpi(2, "process", check=False)
    assert p.returncode == 1, f"{p.stdout}\n{p.stderr}"
    rows = rows_by_name(ws)
    assert rows["intact.bam.c4gh"]["status"] == "available"
    assert rows["no-transfer-checksum.bam.c4gh"]["status"] == "available"
    bad = rows["damaged.bam.c4gh"]
    assert bad["status"] == "failed" and bad["archive_path"] is None
    want = (
        f"damaged.bam.c4gh: transferred file sha256 mismatch: manifest expects "
        f"{hashlib.sha256(sent['damaged.bam.c4gh']).hexdigest()}, computed {hashlib.sha256(raw).hexdigest()}; "
        "re-transfer it"
    )
    assert bad["error"] == want
    [failed] = [e for e in events(ws, "failed") if e["file_id"] == "damaged.bam.c4gh"]
    assert failed["details"].startswith("transfer_corrupt: ")
    assert path.read_bytes() == bytes(raw)  # no quarantine configured: the source stays for re-transfer
    archived = sorted(q.name for q in ws.end_storage.rglob("*") if q.is_file())
    assert archived == sorted(
        n for base in ("intact.bam.c4gh", "no-transfer-checksum.bam.c4gh") for n in (base, base + ".sha256")
    )
