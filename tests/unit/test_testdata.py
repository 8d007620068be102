"""`legampi testdata` writes EGA JSON with EGA's semantics (issue 12, finding 6) and a plaintext tab manifest.

Each manifest is checked against the bytes on disk: `checksum`/`fileSize` against the encrypted file as
written, `unencryptedChecksum` and the tab's md5/sha256 against the file decrypted independently.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from legampi import manifest
from legampi.formats import crypt4gh, legacy_aes
from legampi.keys import load_secret_key, public_from_secret
from legampi.testdata import make_dataset
from tests.conftest import make_keypair

PASSWORD = "legacy-testdata-password"


def _plaintext(fmt: str, path: Path, sk: bytes | None) -> bytes:
    with open(path, "rb") as fh:
        if fmt == "c4gh":
            assert sk is not None
            return b"".join(bytes(c) for c in crypt4gh.decrypt_stream(fh, sk))
        if fmt == "cip":
            return b"".join(legacy_aes.decrypt_stream(fh, PASSWORD, "aes256"))
        return fh.read()


@pytest.mark.parametrize("fmt", ["c4gh", "cip", "plain"])
def test_testdata_manifests_state_what_is_on_disk(tmp_path: Path, fmt: str) -> None:
    keys: dict = {}
    sk = None
    if fmt == "c4gh":
        sk_path, _ = make_keypair(tmp_path, "inbox")
        sk = load_secret_key(sk_path, None)
        keys["inbox_pk"] = public_from_secret(sk)
    elif fmt == "cip":
        keys.update(legacy_password=PASSWORD, legacy_cipher="aes256")
    receiving, metadata = tmp_path / "receiving", tmp_path / "metadata"
    objs = make_dataset(receiving, metadata, "EGADTEST", [0, 1000, 70_000], fmt, seed=3, **keys)
    assert json.loads((metadata / "EGADTEST.json").read_text()) == objs
    ds, from_json = manifest.load(metadata / "EGADTEST.json")
    _, from_tab = manifest.load(metadata / "EGADTEST.tab")
    assert ds == "EGADTEST" and len(objs) == len(from_json) == len(from_tab) == 3
    for obj, j, t in zip(objs, from_json, from_tab, strict=True):
        stored = (receiving / obj["fileName"]).read_bytes()
        plain = _plaintext(fmt, receiving / obj["fileName"], sk)
        assert (obj["checksum"], obj["checksumType"], obj["fileSize"]) == (
            hashlib.md5(stored).hexdigest(),
            "MD5",
            len(stored),
        )
        assert (obj["unencryptedChecksum"], obj["unencryptedChecksumType"]) == (hashlib.md5(plain).hexdigest(), "MD5")
        assert (j["md5"], j["sha256"], j["size"]) == (hashlib.md5(plain).hexdigest(), None, len(stored))
        assert (j["transfer_checksum"], j["transfer_checksum_type"]) == (hashlib.md5(stored).hexdigest(), "md5")
        assert (t["file_name"], t["md5"], t["sha256"]) == (
            obj["fileName"],
            hashlib.md5(plain).hexdigest(),
            hashlib.sha256(plain).hexdigest(),
        )
        assert (t["transfer_checksum"], t["transfer_checksum_type"]) == (None, None)
    if fmt != "plain":
        assert all(o["checksum"] != o["unencryptedChecksum"] for o in objs)
