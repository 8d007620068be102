"""keys.py: loading Crypt4GH keys made by crypt4gh-keygen, with the safety checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from crypt4gh import sodium

from legampi import keys as k


def test_loads_keygen_pair(keys) -> None:
    sk = k.load_secret_key(keys.inbox.sec, None)
    pk = k.load_public_key(keys.inbox.pub)
    assert len(sk) == 32 and len(pk) == 32
    assert sodium.derive_pk(sk) == pk and k.public_from_secret(sk) == pk


def test_locked_key_with_passphrase(keys, h) -> None:
    sk = k.load_secret_key(keys.locked.sec, h.LOCKED_KEY_PASSPHRASE)
    assert k.public_from_secret(sk) == k.load_public_key(keys.locked.pub)


def test_locked_key_wrong_or_missing_passphrase(keys) -> None:
    with pytest.raises(k.KeyFileError) as e:
        k.load_secret_key(keys.locked.sec, "Not-The-Pass-31")
    assert "wrong passphrase" in str(e.value) and str(keys.locked.sec) in str(e.value)
    assert "Not-The-Pass-31" not in str(e.value)
    with pytest.raises(k.KeyFileError, match="no passphrase"):
        k.load_secret_key(keys.locked.sec, None)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_refuses_secret_key_readable_by_others(mode: int, keys, tmp_path: Path) -> None:
    p = tmp_path / "k.sec"
    shutil.copy(keys.inbox.sec, p)
    p.chmod(mode)
    with pytest.raises(k.KeyFileError) as e:
        k.load_secret_key(p, None)
    assert "chmod 600" in str(e.value) and str(p) in str(e.value)
    p.chmod(0o600)
    assert k.load_secret_key(p, None) == k.load_secret_key(keys.inbox.sec, None)


def test_bad_key_files(keys, tmp_path: Path) -> None:
    with pytest.raises(k.KeyFileError, match="does not exist"):
        k.load_secret_key(tmp_path / "missing", None)
    junk = tmp_path / "junk"
    junk.write_text("hello\n")
    junk.chmod(0o600)
    with pytest.raises(k.KeyFileError, match="not a PEM"):
        k.load_secret_key(junk, None)
    with pytest.raises(k.KeyFileError):
        k.load_public_key(junk)
    with pytest.raises(k.KeyFileError):
        k.load_public_key(tmp_path / "missing.pub")
    # a public key given where a secret key is expected
    pub = tmp_path / "pub-as-sec"
    shutil.copy(keys.inbox.pub, pub)
    pub.chmod(0o600)
    with pytest.raises(k.KeyFileError):
        k.load_secret_key(pub, None)


def test_fingerprint(keys) -> None:
    a = k.fingerprint(k.load_public_key(keys.archive.pub))
    b = k.fingerprint(k.load_public_key(keys.inbox.pub))
    assert len(a) == 16 and all(c in "0123456789abcdef" for c in a)
    assert a != b and a == k.fingerprint(k.load_public_key(keys.archive.pub))
