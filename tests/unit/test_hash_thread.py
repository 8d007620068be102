"""Issue 15: the plaintext hashes on their own thread give the same result as in series."""

from __future__ import annotations

import hashlib

import pytest

from legampi import checksum
from legampi.stream import process_file


@pytest.mark.parametrize("size", [0, 1024, 3 * 1024 * 1024 + 123])
def test_threaded_hashes_match_serial(size: int, ws, plaintexts, h) -> None:
    src, data = plaintexts.make(size)
    rel = f"t/huge{size}.dat.c4gh"
    h.c4gh_encrypt(src, ws.keys.inbox.pub, ws.source(rel))
    result = process_file(h.task_for(rel, data), ws.ctx(threads_per_file="2"))
    assert result.status == "available", result.error
    assert (result.md5, result.sha256) == (hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest())


def test_hash_thread_copies_reused_buffers_and_reraises() -> None:
    md5 = hashlib.md5()
    t = checksum.HashThread([md5])
    buf = bytearray(b"a" * 100)
    t.update(buf)
    buf[:] = b"b" * 100  # the producer reuses its buffer at once
    t.close()
    assert md5.hexdigest() == hashlib.md5(b"a" * 100).hexdigest()
    bad = checksum.HashThread([object()])
    bad.update(b"x")
    with pytest.raises(AttributeError):
        bad.close()


def test_auto_only_for_huge_files() -> None:
    assert not checksum.threaded("auto", 100 << 20) and checksum.threaded("auto", checksum.HUGE)
    assert not checksum.threaded("1", checksum.HUGE) and checksum.threaded("2", 0)
