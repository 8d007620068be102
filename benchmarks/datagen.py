"""Benchmark data: throwaway keys, Crypt4GH inbox files, and the tab manifest.

The plaintext is random bytes generated in memory, hashed and encrypted segment by
segment, so it never touches disk (the project rule holds even for synthetic data) and
every contender starts from identical encrypted inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import multiprocessing
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from crypt4gh import header, sodium
from crypt4gh.keys import c4gh, get_private_key, get_public_key

SEGMENT = 65536
CIPHER_SEGMENT = SEGMENT + 28
_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "M": 10**6,
    "MB": 10**6,
    "G": 10**9,
    "GB": 10**9,
    "T": 10**12,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
SAMPLE_PARTS = (  # (suffix, is_large): sorted listing keeps one sample's four files together
    (".bam", True),
    (".bam.bai", False),
    (".vcf.gz", False),
    (".vcf.gz.tbi", False),
)


def parse_size(text: str) -> int:
    """Parse '64KiB', '20MB', '1.5GB', '4096' into bytes (KB/MB/GB decimal, KiB/MiB/GiB binary)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(
            f"invalid size {text!r}: expected a number with an optional unit (B, KB, MB, GB, KiB, MiB, GiB)"
        )
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"invalid size {text!r}: must be non-negative")
    return round(value)


def human(n: float) -> str:
    """Format a byte count for tables (decimal units, like the MB/s column)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def plan_sizes(spec: str, files: int, seed: int = 1, total: int | None = None) -> list[tuple[str, int]]:
    """Turn a size spec into (file name, plaintext size) pairs.

    Specs: ``SIZE`` or ``fixed:SIZE``; ``uniform:MIN,MAX``; ``lognormal:MEAN,SIGMA`` (MEAN is the
    arithmetic mean, so the median is MEAN*exp(-SIGMA^2/2)); ``per-sample:LARGE,SMALL`` where
    ``files`` counts samples and each sample has one LARGE and three SMALL files that sort
    together (the pattern that defeats static round-robin). ``total`` rescales to that sum.
    """
    if files < 1:
        raise ValueError(f"--files must be at least 1, got {files}")
    rng = np.random.default_rng(seed)
    kind, _, args = spec.partition(":")
    if not args:
        kind, args = "fixed", spec
    params = [a for a in args.split(",") if a.strip()]
    kind = kind.strip().lower()
    try:
        if kind == "fixed" and len(params) == 1:
            sizes = [parse_size(params[0])] * files
            names = [f"f{i:05d}.dat" for i in range(1, files + 1)]
        elif kind == "uniform" and len(params) == 2:
            lo, hi = parse_size(params[0]), parse_size(params[1])
            if hi < lo:
                raise ValueError(f"uniform MAX {hi} < MIN {lo}")
            sizes = [int(x) for x in rng.integers(lo, hi + 1, size=files)]
            names = [f"f{i:05d}.dat" for i in range(1, files + 1)]
        elif kind == "lognormal" and len(params) == 2:
            mean, sigma = parse_size(params[0]), float(params[1])
            if mean <= 0 or sigma < 0:
                raise ValueError("lognormal needs MEAN > 0 and SIGMA >= 0")
            mu = math.log(mean) - sigma * sigma / 2
            sizes = [max(1, int(x)) for x in rng.lognormal(mu, sigma, size=files)]
            names = [f"f{i:05d}.dat" for i in range(1, files + 1)]
        elif kind == "per-sample" and len(params) == 2:
            large, small = parse_size(params[0]), parse_size(params[1])
            sizes, names = [], []
            for s in range(1, files + 1):
                for suffix, is_large in SAMPLE_PARTS:
                    names.append(f"S{s:04d}{suffix}")
                    sizes.append(large if is_large else small)
        else:
            raise ValueError("unknown kind or wrong number of parameters")
    except ValueError as exc:
        raise ValueError(
            f"invalid --sizes {spec!r}: {exc}; use SIZE, fixed:SIZE, uniform:MIN,MAX, "
            f"lognormal:MEAN,SIGMA or per-sample:LARGE,SMALL"
        ) from exc
    if total is not None:
        current = sum(sizes)
        if current == 0:
            raise ValueError(f"--total {total} cannot rescale sizes that are all zero ({spec!r})")
        sizes = [max(1, round(s * total / current)) for s in sizes]
    return list(zip(names, sizes, strict=True))


@dataclass(frozen=True)
class KeySet:
    """Paths of the throwaway inbox and archive key pairs (unencrypted secret keys)."""

    inbox_sk: str
    inbox_pk: str
    archive_sk: str
    archive_pk: str

    def inbox_secret(self) -> bytes:
        return get_private_key(self.inbox_sk, lambda: "")

    def archive_secret(self) -> bytes:
        return get_private_key(self.archive_sk, lambda: "")

    def archive_public(self) -> bytes:
        return get_public_key(self.archive_pk)

    def inbox_public(self) -> bytes:
        return get_public_key(self.inbox_pk)


def make_keys(keydir: Path) -> KeySet:
    """Create inbox and archive key pairs with crypt4gh's own key writer (no passphrase: test keys)."""
    keydir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role in ("inbox", "archive"):
        sk, pk = keydir / f"{role}.sec", keydir / f"{role}.pub"
        for p in (sk, pk):
            if p.exists():
                p.chmod(0o600)
                p.unlink()
        # crypt4gh prints a warning for unencrypted keys; these are throwaway benchmark keys.
        with contextlib.redirect_stderr(io.StringIO()):
            c4gh.generate(str(sk), str(pk), None, b"legampi-benchmark")
        paths[f"{role}_sk"], paths[f"{role}_pk"] = str(sk), str(pk)
    return KeySet(**paths)


@dataclass
class DataFile:
    """One benchmark input: the encrypted inbox file and the plaintext facts the manifest states."""

    name: str
    path: str
    size: int  # plaintext bytes
    enc_size: int  # bytes of the Crypt4GH inbox file
    md5: str
    sha256: str

    def to_dict(self) -> dict:
        return asdict(self)


def encrypt_header(session_key: bytes, recipient_pk: bytes) -> bytes:
    """Serialize a Crypt4GH header that gives ``session_key`` to ``recipient_pk`` (ephemeral sender)."""
    packet = header.make_packet_data_enc(0, session_key)
    return header.serialize(header.encrypt(packet, [(0, os.urandom(32), recipient_pk)]))


def _make_one(job: tuple[str, str, int, bytes]) -> DataFile:
    name, path, size, recipient_pk = job
    session_key = os.urandom(32)
    md5, sha = hashlib.md5(), hashlib.sha256()
    cipher = bytearray(CIPHER_SEGMENT)
    left = size
    with open(path, "wb") as out:
        out.write(encrypt_header(session_key, recipient_pk))
        while left > 0:
            chunk = os.urandom(min(left, 16 * SEGMENT))
            left -= len(chunk)
            md5.update(chunk)
            sha.update(chunk)
            view = memoryview(chunk)
            for off in range(0, len(chunk), SEGMENT):
                n = sodium.chacha20poly1305_encrypt(cipher, view[off : off + SEGMENT], session_key)
                out.write(cipher[:n])
    return DataFile(name, path, size, os.path.getsize(path), md5.hexdigest(), sha.hexdigest())


def generate(inbox: Path, plan: list[tuple[str, int]], keys: KeySet, workers: int = 1) -> list[DataFile]:
    """Write each planned file as ``<name>.c4gh`` in ``inbox``, encrypted for the inbox key."""
    inbox.mkdir(parents=True, exist_ok=True)
    pk = keys.inbox_public()
    jobs = [(f"{name}.c4gh", str(inbox / f"{name}.c4gh"), size, pk) for name, size in plan]
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool:
            return pool.map(_make_one, jobs, chunksize=1)
    return [_make_one(j) for j in jobs]


def write_manifest(path: Path, files: list[DataFile]) -> None:
    """Tab manifest, one file a line: name, plaintext md5, transferred size (the Crypt4GH inbox file's
    bytes, as legampi's tab manifests and EGA's fileSize mean it), plaintext sha256."""
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{d.name}\t{d.md5}\t{d.enc_size}\t{d.sha256}\n" for d in files)


def decrypt_digest(path: str, secret_key: bytes) -> tuple[str, str, int]:
    """Stream-decrypt a Crypt4GH file in memory; return plaintext (md5, sha256, size) to verify outputs."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        try:
            session_keys, edit_list = header.deconstruct(f, [(0, secret_key, None)])
        except ValueError as exc:
            raise ValueError(f"{path}: cannot decrypt the Crypt4GH header with the archive key: {exc}") from exc
        if edit_list is not None:
            raise ValueError(f"{path}: unexpected edit list in an archived file")
        plain = bytearray(SEGMENT)
        cipher = bytearray(CIPHER_SEGMENT)
        while True:
            n = f.readinto(cipher)
            if n == 0:
                break
            if n <= 28:
                raise ValueError(f"{path}: truncated final segment ({n} bytes)")
            try:
                p = sodium.chacha20poly1305_decrypt(plain, memoryview(cipher)[:n], session_keys[0])
            except ValueError as exc:
                raise ValueError(f"{path}: segment at plaintext offset {size} fails authentication") from exc
            md5.update(memoryview(plain)[:p])
            sha.update(memoryview(plain)[:p])
            size += p
    return md5.hexdigest(), sha.hexdigest(), size


def check_layout(path: str, plain_size: int) -> list[str]:
    """Cheap check for every archived file: a Crypt4GH header, then exactly the payload length
    ``plain_size`` needs (catches truncated or padded outputs without decrypting)."""
    with open(path, "rb") as f:
        try:
            list(header.parse(f))
        except ValueError as exc:
            return [f"{path}: not a Crypt4GH file: {exc}"]
        head = f.tell()
    payload = os.path.getsize(path) - head
    expected = plain_size + 28 * -(-plain_size // SEGMENT)
    if payload != expected:
        return [f"{path}: payload is {payload} bytes, {plain_size} plaintext bytes need {expected}"]
    return []
