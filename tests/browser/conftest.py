"""Headless-Chromium tooling for the report browser tests: launch, PNG decoding, sample data.

A real browser is the only way to know the inline SVG and CSS actually lay out and paint; the
unit tests only see markup. Helpers are fixtures so test modules never import this file.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import zlib
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from random import Random
from typing import Any

import pytest

CHROMIUM_TIMEOUT_S = 120


def find_chromium() -> str | None:
    """The Debian ``chromium`` package installs /usr/bin/chromium; accept it on PATH too."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def run_chromium(binary: str, workdir: Path, extra: list[str], url: str) -> subprocess.CompletedProcess[bytes]:
    """Run headless Chromium once, bounded in time; on timeout its whole process group is killed."""
    profile = workdir / "profile"
    profile.mkdir(exist_ok=True)
    env = dict(
        os.environ,
        HOME=str(workdir),
        XDG_CONFIG_HOME=str(workdir / "xdg-config"),
        XDG_CACHE_HOME=str(workdir / "xdg-cache"),
    )
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
        *extra,
        url,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=workdir, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"chromium did not finish within {CHROMIUM_TIMEOUT_S} s: {' '.join(cmd)}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def decode_png(blob: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes) to rows of pixels.

    Returns (width, height, rows) where each row is ``width * channels`` unfiltered bytes; it
    raises ValueError on anything else, naming the cause, so a broken screenshot fails loudly.
    """
    if blob[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG: bad signature")
    pos = 8
    idat = bytearray()
    ihdr = None
    while pos < len(blob):
        (length,) = struct.unpack(">I", blob[pos : pos + 4])
        ctype = blob[pos + 4 : pos + 8]
        chunk = blob[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", blob[pos + 8 + length : pos + 12 + length])
        if zlib.crc32(ctype + chunk) != crc:
            raise ValueError(f"PNG chunk {ctype!r} has a bad CRC")
        if ctype == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", chunk)
        elif ctype == b"IDAT":
            idat += chunk
        elif ctype == b"IEND":
            break
        pos += 12 + length
    if ihdr is None:
        raise ValueError("PNG has no IHDR chunk")
    width, height, depth, colour, _comp, _filt, interlace = ihdr
    channels = {2: 3, 6: 4}.get(colour)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"unsupported PNG layout: depth {depth}, colour type {colour}, interlace {interlace}")
    raw = zlib.decompress(bytes(idat))
    stride = width * channels
    if len(raw) != height * (stride + 1):
        raise ValueError(f"PNG data is {len(raw)} bytes, expected {height * (stride + 1)}")
    rows: list[bytes] = []
    prev = bytearray(stride)
    bpp = channels
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if ftype == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif ftype == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif ftype == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        elif ftype != 0:
            raise ValueError(f"PNG row {y} has unknown filter type {ftype}")
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def sample_report_data() -> dict[str, Any]:
    """A realistic state: 3 datasets, 60 files, 2 runs of 3 ranks, a few failures and audit problems."""
    rnd = Random(20240501)
    t0 = datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)

    def iso(t: datetime) -> str:
        return t.isoformat().replace("+00:00", "Z")

    plan = [  # dataset, files, statuses in order of file index
        ("EGAD00001000101", 25, ["available"] * 25),
        ("EGAD00001000102", 20, ["available"] * 15 + ["failed"] * 3 + ["processing"] * 2),
        ("EGAD00001000103", 15, ["available"] * 5 + ["received"] * 6 + ["pending"] * 4),
    ]
    kinds = ["bam", "cram", "vcf.gz", "fastq.gz"]
    files = []
    for k, (ds, n, statuses) in enumerate(plan):
        for i in range(n):
            size = int(rnd.lognormvariate(20.6, 0.9))  # median ~900 MB, a few of 5+ GB
            name = f"sample_{k + 1}{i:03d}.{kinds[(i + k) % len(kinds)]}.c4gh"
            files.append(
                {
                    "ds": ds,
                    "file_id": f"EGAF{(k + 1) * 1000 + i:011d}",
                    "name": name,
                    "size": size,
                    "status": statuses[i],
                }
            )
    runs_spec = [
        ("81230", t0 + timedelta(hours=3), ["EGAD00001000101"]),
        ("81377", t0 + timedelta(hours=3, minutes=25), ["EGAD00001000102", "EGAD00001000103"]),
    ]
    hosts = ["c1-17", "c1-17", "c1-18"]
    archived, runs = [], []
    for job, start, dss in runs_spec:
        todo = sorted(
            (f for f in files if f["ds"] in dss and f["status"] in ("available", "failed")),
            key=lambda f: -f["size"],
        )
        clock = {1: start + timedelta(seconds=20), 2: start + timedelta(seconds=20)}
        per_rank = {r: {"files": 0, "bytes": 0, "seconds": 0.0} for r in (0, 1, 2)}
        rate = {1: 152e6, 2: 138e6}
        for f in todo:
            r = min(clock, key=lambda x: clock[x])
            secs = f["size"] / rate[r] * rnd.uniform(0.9, 1.1) + 0.4
            clock[r] += timedelta(seconds=secs)
            per_rank[r]["seconds"] += secs
            if f["status"] == "available":
                per_rank[r]["files"] += 1
                per_rank[r]["bytes"] += f["size"]
                archived.append({"at": iso(clock[r]), "bytes": f["size"], "dataset_id": f["ds"]})
            f["updated_at"] = clock[r]
        end = max(clock.values()) + timedelta(seconds=5)
        per_rank[0]["seconds"] = (end - start).total_seconds()
        runs.append(
            {
                "job_id": job,
                "started_at": iso(start),
                "ended_at": iso(end),
                "files": sum(p["files"] for p in per_rank.values()),
                "bytes": sum(p["bytes"] for p in per_rank.values()),
                "failed": sum(1 for f in todo if f["status"] == "failed"),
                "ranks": [{"rank": r, "host": hosts[r], **per_rank[r]} for r in (0, 1, 2)],
            }
        )
    errors = [
        "md5 mismatch: manifest 3f2a9c0d51e6b7a8c9d0e1f2a3b4c5d6, computed 9b1c44e0aa0f3d2e1c0b9a8f7e6d5c4b",
        "crypt4gh: no key could decrypt the header (file encrypted for another recipient?)",
        "size mismatch: manifest says 1873201152 bytes, stream ended after 1207959552 bytes (truncated)",
    ]
    failed = [
        {
            "file_id": f["file_id"],
            "dataset_id": f["ds"],
            "file_name": f["name"],
            "error": errors[i],
            "updated_at": iso(f["updated_at"]),
        }
        for i, f in enumerate(f for f in files if f["status"] == "failed")
    ]
    datasets = []
    for k, (ds, n, _) in enumerate(plan):
        mine = [f for f in files if f["ds"] == ds]
        by_status = {
            s: {
                "files": sum(1 for f in mine if f["status"] == s),
                "bytes": sum(f["size"] for f in mine if f["status"] == s),
            }
            for s in ("pending", "received", "processing", "available", "failed")
        }
        req = t0 - timedelta(days=2, hours=5 - k)
        dl_start = req + timedelta(hours=20 + 3 * k)
        done = all(f["status"] == "available" for f in mine)
        datasets.append(
            {
                "dataset_id": ds,
                "n_files": n,
                "n_bytes": sum(f["size"] for f in mine),
                "date_requested": iso(req),
                "date_download_start": iso(dl_start),
                "date_download_end": iso(dl_start + timedelta(hours=6, minutes=12 * k)) if k < 2 else None,
                "date_processing_end": runs[0]["ended_at"] if done else None,
                "by_status": by_status,
            }
        )
    avail = [f for f in files if f["status"] == "available"]
    audit_at = t0 + timedelta(hours=10)
    audits = [
        {
            "at": iso(audit_at + timedelta(seconds=7 * i)),
            "file_id": f["file_id"],
            "dataset_id": f["ds"],
            "result": "ok",
            "details": None,
        }
        for i, f in enumerate(avail[:30])
    ]
    audits[4]["result"] = "mismatch"
    audits[4]["details"] = "sha256 of archived file differs from the recorded archive checksum"
    audits[11]["result"] = "missing"
    audits[11]["details"] = "archive path does not exist"
    return {
        "generated_at": iso(t0 + timedelta(hours=10, minutes=5)),
        "title": "legampi archive report",
        "datasets": datasets,
        "archived": archived,
        "runs": runs,
        "failed": failed,
        "audits": audits,
    }


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of the Chromium binary; the browser tests are skipped (not failed) where it is not installed."""
    path = find_chromium()
    if path is None:
        pytest.skip("chromium is not installed (Debian package 'chromium'); browser tests need it")
    return path


@pytest.fixture
def chromium_run(chromium: str, tmp_path: Path) -> Callable[[list[str], str], subprocess.CompletedProcess[bytes]]:
    def run(extra: list[str], url: str) -> subprocess.CompletedProcess[bytes]:
        return run_chromium(chromium, tmp_path, extra, url)

    return run


@pytest.fixture
def png_decode() -> Callable[[bytes], tuple[int, int, list[bytes]]]:
    return decode_png


@pytest.fixture
def report_sample() -> dict[str, Any]:
    return sample_report_data()
