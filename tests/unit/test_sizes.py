"""Issue 17: one meaning per size. A tab manifest's size column is the transferred size (the encrypted file
as received, like EGA's fileSize), so every writer of tab manifests writes that, not the plaintext size."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from legampi import manifest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import bookkeeping
    import datagen

    yield datagen, bookkeeping
    for name in ("datagen", "bookkeeping"):
        sys.modules.pop(name, None)


def _sizes(path: Path) -> dict[str, int | None]:
    return {e["file_name"]: e["size"] for e in manifest.parse_tab(path.read_text(encoding="utf-8"), str(path))}


def test_datagen_manifest_states_the_transferred_size(bench, tmp_path: Path) -> None:
    datagen, _ = bench
    keys = datagen.make_keys(tmp_path / "keys")
    files = datagen.generate(tmp_path / "inbox", [("a", 1000), ("b", 70_000)], keys)
    datagen.write_manifest(tmp_path / "m.tsv", files)
    sizes = _sizes(tmp_path / "m.tsv")
    for d in files:
        assert sizes[d.name] == os.path.getsize(d.path) != d.size


def test_bookkeeping_manifest_states_the_transferred_size(bench, tmp_path: Path) -> None:
    datagen, bookkeeping = bench
    from crypt4gh.keys import c4gh

    c4gh.generate(str(tmp_path / "k.sec"), str(tmp_path / "k.pub"), None, b"x")
    from legampi.keys import load_public_key

    entries = bookkeeping.make_small_files(tmp_path / "inbox", 2, 1024, load_public_key(tmp_path / "k.pub"))
    bookkeeping.write_manifest(tmp_path / "m.tsv", entries)
    sizes = _sizes(tmp_path / "m.tsv")
    for e in entries:
        assert sizes[e.name] == (tmp_path / "inbox" / e.name).stat().st_size != e.size == 1024
