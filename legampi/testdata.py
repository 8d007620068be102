"""Test datasets with real checksums: encrypted files in receiving plus their manifests (tab and EGA JSON).

The seed's CreateTestFiles without its hard-coded paths. Plaintext is generated in memory, hashed and
encrypted on the way to disk; it is never written in clear (unless the format is `plain`). The JSON has
EGA's semantics: `checksum` is the md5 of the encrypted file as written (as transferred), and
`unencryptedChecksum` the md5 of the plaintext; the tab manifest states the plaintext only.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

UNITS = {
    "": 1,
    "B": 1,
    "K": 1000,
    "KB": 1000,
    "KIB": 1024,
    "M": 10**6,
    "MB": 10**6,
    "MIB": 2**20,
    "G": 10**9,
    "GB": 10**9,
    "GIB": 2**30,
}
EXTENSION = {"c4gh": ".c4gh", "cip": ".cip", "gpg": ".gpg", "plain": ""}


def parse_size(text: str) -> int:
    """'100MB' -> 100000000, '64KiB' -> 65536, '0' -> 0."""
    t = text.strip().upper().replace(" ", "")
    num = t.rstrip("KMGIB")
    unit = t[len(num) :]
    if unit not in UNITS or not num:
        raise ValueError(f"bad size {text!r} (examples: 0, 512, 64KiB, 100MB, 2GB)")
    return int(float(num) * UNITS[unit])


def sizes_from_spec(files: int, size: str | None, sizes: str | None, seed: int = 1) -> list[int]:
    """Fixed sizes (--size) or a lognormal mix (--sizes lognormal:MEAN,SIGMA, MEAN the median size)."""
    if sizes:
        kind, _, params = sizes.partition(":")
        if kind != "lognormal" or "," not in params:
            raise ValueError(f"bad --sizes {sizes!r}; want lognormal:MEDIAN,SIGMA e.g. lognormal:20MB,1.5")
        median_s, sigma_s = params.split(",", 1)
        median, sigma = parse_size(median_s), float(sigma_s)
        rng = np.random.default_rng(seed)
        return [int(x) for x in rng.lognormal(np.log(max(median, 1)), sigma, files)]
    return [parse_size(size or "1MB")] * files


def _plaintext(size: int, rng: np.random.Generator, block: int = 4 << 20) -> Iterator[bytes]:
    left = size
    while left > 0:
        n = min(block, left)
        yield rng.bytes(n)
        left -= n


def write_file(
    path: Path,
    size: int,
    fmt: str,
    rng: np.random.Generator,
    *,
    inbox_pk: bytes | None = None,
    legacy_password: str | None = None,
    legacy_cipher: str = "aes128",
    gpg_home: Path | None = None,
    gpg_recipient: str | None = None,
) -> tuple[str, str, str]:
    """Write one encrypted file of SIZE plaintext bytes; returns the plaintext's md5 and sha256 and the md5
    of the encrypted file as written."""
    md5, sha, written = hashlib.md5(), hashlib.sha256(), hashlib.md5()

    def hashed() -> Iterator[bytes]:
        for chunk in _plaintext(size, rng):
            md5.update(chunk)
            sha.update(chunk)
            yield chunk

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    if fmt == "c4gh":
        from .formats.crypt4gh import encrypt_stream

        if inbox_pk is None:
            raise ValueError("c4gh test files need [crypto] inbox_secret_key (its public key is derived)")
        out: Iterator[bytes | memoryview] = encrypt_stream(hashed(), inbox_pk)
    elif fmt == "cip":
        from .formats.legacy_aes import encrypt_stream as cip_encrypt

        if legacy_password is None:
            raise ValueError("cip test files need the legacy password (LEGAMPI_LEGACY_PASSWORD)")
        out = cip_encrypt(hashed(), legacy_password, legacy_cipher)
    elif fmt == "plain":
        out = hashed()
    elif fmt == "gpg":
        if gpg_home is None:
            raise ValueError("gpg test files need [crypto] gnupg_home with the node's key")
        with open(tmp, "wb") as fh:
            cmd = [
                "gpg",
                "--homedir",
                str(gpg_home),
                "--batch",
                "--yes",
                "--trust-model",
                "always",
                "--compress-algo",
                "none",
                "-e",
                "-r",
                gpg_recipient or _first_gpg_key(gpg_home),
                "-o",
                "-",
            ]
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=fh, stderr=subprocess.PIPE)
            assert proc.stdin is not None
            for chunk in hashed():
                proc.stdin.write(chunk)
            proc.stdin.close()
            err = proc.stderr.read() if proc.stderr else b""
            if proc.wait() != 0:
                tmp.unlink(missing_ok=True)
                raise RuntimeError(f"gpg failed to encrypt {path}: {err.decode(errors='replace').strip()}")
        with open(tmp, "rb") as back:  # gpg wrote it: hash what is on disk
            for block in iter(lambda: back.read(1 << 20), b""):
                written.update(block)
        os.replace(tmp, path)
        return md5.hexdigest(), sha.hexdigest(), written.hexdigest()
    else:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(EXTENSION)}")
    with open(tmp, "wb") as fh:
        for piece in out:
            fh.write(piece)
            written.update(piece)
    os.replace(tmp, path)
    return md5.hexdigest(), sha.hexdigest(), written.hexdigest()


def _first_gpg_key(home: Path) -> str:
    p = subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--with-colons", "--list-keys"],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in p.stdout.splitlines():
        if line.startswith("fpr:"):
            return line.split(":")[9]
    raise ValueError(f"no OpenPGP key in {home}")


def make_dataset(
    receiving: Path,
    metadata: Path,
    dataset_id: str,
    sizes: list[int],
    fmt: str,
    *,
    seed: int = 1,
    prefix: str = "",
    **keys: Any,
) -> list[dict[str, Any]]:
    """Write files into RECEIVING and DATASET.tab + DATASET.json into METADATA; returns the JSON's file objects.

    DATASET.json: EGA file objects (`checksum`/`fileSize` of the encrypted file as written, plaintext md5 in
    `unencryptedChecksum`); DATASET.tab: name, plaintext md5, transferred size (the encrypted file), plaintext
    sha256.
    """
    rng = np.random.default_rng(seed)
    entries, lines = [], []
    for i, size in enumerate(sizes, 1):
        name = f"{prefix}{dataset_id}/sample{i:04d}.bam{EXTENSION[fmt]}"
        md5, sha, written = write_file(receiving / name, size, fmt, rng, **keys)
        stored = (receiving / name).stat().st_size
        entries.append(
            {
                "fileId": f"{dataset_id}F{i:07d}",
                "datasetId": dataset_id,
                "fileName": name,
                "fileSize": stored,
                "checksum": written,
                "checksumType": "MD5",
                "unencryptedChecksum": md5,
                "unencryptedChecksumType": "MD5",
                "fileStatus": "available",
            }
        )
        lines.append(f"{name}\t{md5}\t{stored}\t{sha}\n")
    metadata.mkdir(parents=True, exist_ok=True)
    (metadata / f"{dataset_id}.json").write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
    (metadata / f"{dataset_id}.tab").write_text("".join(lines), encoding="utf-8")
    return entries
