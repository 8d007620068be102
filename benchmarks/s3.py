"""legampi's S3 archive writer against the transfer floor and against the folder archive, in one run.

Contenders, each given the same Crypt4GH-encrypted bytes (made once, in memory) in 4 MiB writes as the
worker's pipeline hands them over:

  legampi-s3      legampi.s3writer.S3ArchiveWriter: one part buffer, per-part sha256 checked by the
                  server, whole-object sha256, CompleteMultipartUpload with If-None-Match
  legampi-s3-c2   the same with concurrency=2: two parts upload in threads while the next one fills
  boto3-floor     boto3's upload_fileobj of the same bytes (default TransferConfig: 8 MiB parts,
                  10 threads, no checksums asked): the transfer floor of a plain S3 client
  boto3-1thread   the same with use_threads=False: the floor for one sequential stream
  legampi-folder  legampi.archive.TempArchiveFile + commit: temp write, sha256, fsync, link

The server is a local SeaweedFS (`weed mini`, started and stopped here, 127.0.0.1 only), its data on
the same disk as the folder contender. Every upload is checked (sha256 of the stored object).

  python benchmarks/s3.py --smoke          # seconds: small sizes, one round
  python benchmarks/s3.py --size 512MiB --rounds 3
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from legampi import archive  # noqa: E402
from legampi.provenance import record  # noqa: E402
from legampi.s3config import ArchiveConfig  # noqa: E402
from legampi.s3local import LocalS3  # noqa: E402
from legampi.s3store import S3Store  # noqa: E402
from legampi.s3writer import MIN_PART, S3ArchiveWriter, part_size_for  # noqa: E402

MiB = 1 << 20
WRITE = 4 * MiB  # the worker's write size (func_conf chunk_size default)


def parse_size(text: str) -> int:
    units = {"kib": 1 << 10, "mib": MiB, "gib": 1 << 30, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "b": 1}
    t = text.strip().lower()
    for unit, mult in units.items():
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * mult)
    return int(t)


def encrypted_bytes(size: int) -> bytes:
    """SIZE bytes of random plaintext encrypted for a throwaway Crypt4GH key, in memory."""
    from crypt4gh import sodium

    from legampi.formats.crypt4gh import encrypt_stream

    pk = bytes(sodium.derive_pk(os.urandom(32)))
    plain = os.urandom(size)
    return b"".join(bytes(c) for c in encrypt_stream([plain], pk))


def _chunks(data: bytes) -> list[memoryview]:
    view = memoryview(data)
    return [view[i : i + WRITE] for i in range(0, len(data), WRITE)]


def run_legampi_s3(store: S3Store, data: bytes, key: str, part_size: int, concurrency: int = 0) -> str:
    claim = record("EGAF0", key, "EGAD0", "0" * 32, None, None, "bench")
    w = S3ArchiveWriter(store, key, claim, len(data), job_id="bench", part_size=part_size, concurrency=concurrency)
    for c in _chunks(data):
        w.write(c)
    digest = w.finish()
    w.commit({**claim, "sha256": "1" * 64, "plain_size": 0})
    return digest


def run_boto3(store: S3Store, data: bytes, key: str, threads: bool) -> str:
    from boto3.s3.transfer import TransferConfig

    store.client.upload_fileobj(
        io.BytesIO(data), store.bucket, store.key(key), Config=TransferConfig(use_threads=threads)
    )
    return hashlib.sha256(data).hexdigest()  # what a caller would still have to compute


def run_folder(folder: Path, data: bytes, key: str) -> str:
    w = archive.TempArchiveFile(folder / key)
    for c in _chunks(data):
        w.write(c)
    digest = w.finish()
    w.commit()
    return digest


def stored_sha256(store: S3Store, key: str) -> str:
    return store.hash_object(key).sha256


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="256MiB", help="plaintext size per upload (default 256MiB)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per contender (best and median shown)")
    p.add_argument("--part-size", default=None, help="legampi's part size (default: chosen from the size)")
    p.add_argument("--smoke", action="store_true", help="a few seconds: 24MiB, one round, 5MiB parts")
    p.add_argument("--workdir", default=None, help="folder for the server's data and the folder archive")
    args = p.parse_args(argv)
    size = 24 * MiB if args.smoke else parse_size(args.size)
    rounds = 1 if args.smoke else args.rounds
    data = encrypted_bytes(size)
    want = hashlib.sha256(data).hexdigest()
    part = parse_size(args.part_size) if args.part_size else (MIN_PART if args.smoke else part_size_for(len(data)))
    part = max(part, 8 * MiB) if not args.smoke and not args.part_size else part
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="legampi-s3-bench-") as tmp:
        folder = Path(tmp) / "archive"
        folder.mkdir()
        with LocalS3(Path(tmp) / "s3") as server:
            store = S3Store(ArchiveConfig("s3", server.endpoint, "bench"), server.credentials)
            store.client.create_bucket(Bucket="bench")
            contenders: dict[str, Callable[[str], str]] = {
                "legampi-s3": lambda k: run_legampi_s3(store, data, k, part),
                "legampi-s3-c2": lambda k: run_legampi_s3(store, data, k, part, 2),
                "boto3-floor": lambda k: run_boto3(store, data, k, True),
                "boto3-1thread": lambda k: run_boto3(store, data, k, False),
                "legampi-folder": lambda k: run_folder(folder, data, k),
            }
            times: dict[str, list[float]] = {name: [] for name in contenders}
            for r in range(rounds):
                for name, run in contenders.items():  # interleaved: drift hits every contender alike
                    key = f"{name}-{r}.c4gh"
                    t0 = time.perf_counter()
                    digest = run(key)
                    times[name].append(time.perf_counter() - t0)
                    got = hashlib.sha256((folder / key).read_bytes()).hexdigest() if "folder" in name else None
                    got = got or stored_sha256(store, key)
                    if digest != want or got != want:
                        print(f"FAILED {name}: stored sha256 {got}, expected {want}", file=sys.stderr)
                        return 1
    report(times, len(data), part, rounds)
    return 0


def report(times: dict[str, list[float]], nbytes: int, part: int, rounds: int) -> None:
    print(f"{nbytes / MiB:.1f} MiB encrypted, {rounds} round(s), legampi part size {part // MiB} MiB, 4 MiB writes")
    print(f"{'contender':<16} {'best s':>8} {'median s':>9} {'MB/s (best)':>12} {'vs boto3-floor':>15}")
    floor = min(times["boto3-floor"])
    for name, ts in times.items():
        best = min(ts)
        mbps = nbytes / best / 1e6
        print(f"{name:<16} {best:8.3f} {statistics.median(ts):9.3f} {mbps:12.1f} {best / floor:14.2f}x")


if __name__ == "__main__":
    sys.exit(main())
