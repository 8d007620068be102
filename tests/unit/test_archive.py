"""archive.py (paths, temp files, no-overwrite commit) and checksum.py (coreutils sidecars)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from legampi import archive, checksum
from legampi.formats import IngestError

EXT = (".c4gh", ".cip", ".gpg")


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("a/x.bam.c4gh", "a/x.bam.c4gh"),
        ("x.bam.cip", "x.bam.c4gh"),
        ("x.bam", "x.bam.c4gh"),
        ("d/e/x.vcf.gz.gpg", "d/e/x.vcf.gz.c4gh"),
        ("X.BAM.CIP", "X.BAM.c4gh"),
        ("x.bam.tar", "x.bam.tar.c4gh"),
    ],
)
def test_archive_name(rel: str, expected: str) -> None:
    assert archive.archive_name(rel, EXT) == expected


@pytest.mark.parametrize(
    ("rel", "needle"),
    [
        ("/etc/passwd", "absolute"),
        ("../x.c4gh", ".."),
        ("a/../../x.c4gh", ".."),
        ("", "empty"),
    ],
)
def test_check_rel_refuses(rel: str, needle: str) -> None:
    with pytest.raises(IngestError) as e:
        archive.check_rel(rel)
    assert e.value.kind == "unsafe_path" and needle in str(e.value)


def test_temp_names_are_recognisable() -> None:
    t = archive.temp_name("x.bam.c4gh")
    assert t.startswith(".x.bam.c4gh.legampi-tmp-") and archive.is_temp_name(t)
    assert archive.final_name_of_temp(t) == "x.bam.c4gh"
    assert archive.temp_name("x") != archive.temp_name("x")
    for name in ("x.bam.c4gh", "x.bam.c4gh.sha256", ".hidden", ".x.legampi-tmp-", "x.legampi-tmp-1-abcdef12"):
        assert not archive.is_temp_name(name)


def test_safe_source(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "a").mkdir(parents=True)
    (proc / "a" / "x.c4gh").write_bytes(b"x")
    assert archive.safe_source(proc, "a/x.c4gh") == proc.resolve() / "a" / "x.c4gh"
    (proc / "a" / "l.c4gh").symlink_to(proc / "a" / "x.c4gh")
    with pytest.raises(IngestError, match="symbolic link"):
        archive.safe_source(proc, "a/l.c4gh")
    (tmp_path / "out").mkdir()
    (proc / "d").symlink_to(tmp_path / "out")
    with pytest.raises(IngestError, match="outside the processing"):
        archive.safe_source(proc, "d/x.c4gh")


def test_open_source_refuses_symlink_swapped_in(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(IngestError) as e:
        archive.open_source(tmp_path / "link", "link")
    assert e.value.kind == "unsafe_path"


def test_temp_file_commit_and_modes(tmp_path: Path) -> None:
    final = tmp_path / "end" / "a" / "x.c4gh"
    archive.make_dirs(final.parent, tmp_path / "end")
    assert stat.S_IMODE((tmp_path / "end" / "a").stat().st_mode) == 0o750
    w = archive.TempArchiveFile(final, 0o640, "sha256")
    assert archive.is_temp_name(w.temp.name) and w.temp.parent == final.parent
    w.write(b"hello ")
    w.write(memoryview(b"world"))
    assert w.finish() == hashlib.sha256(b"hello world").hexdigest()
    assert not final.exists()
    w.commit()
    assert final.read_bytes() == b"hello world" and not w.temp.exists()
    assert stat.S_IMODE(final.stat().st_mode) == 0o640 and w.size == 11


def test_commit_never_overwrites(tmp_path: Path) -> None:
    final = tmp_path / "x.c4gh"
    w = archive.TempArchiveFile(final)
    w.write(b"new")
    w.finish()
    final.write_bytes(b"old")
    with pytest.raises(IngestError) as e:
        w.commit()
    assert e.value.kind == "archive_conflict" and "not overwritten" in str(e.value)
    assert final.read_bytes() == b"old"
    w.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.c4gh"]


def test_abort_removes_temp_only(tmp_path: Path) -> None:
    final = tmp_path / "x.c4gh"
    w = archive.TempArchiveFile(final)
    w.write(b"partial")
    w.abort()
    w.abort()  # idempotent
    assert list(tmp_path.iterdir()) == []


def test_make_dirs_refuses_outside_top(tmp_path: Path) -> None:
    with pytest.raises(IngestError):
        archive.make_dirs(tmp_path / "elsewhere", tmp_path / "end")


def test_remove_source(tmp_path: Path) -> None:
    p = tmp_path / "x.c4gh"
    p.write_bytes(b"x")
    assert archive.remove_source(p) is True and not p.exists()
    assert archive.remove_source(p) is False


def test_quarantine_source_keeps_earlier_copies(tmp_path: Path) -> None:
    q = tmp_path / "quarantine"
    for content in (b"first", b"second"):
        src = tmp_path / "proc" / "a" / "x.c4gh"
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(content)
        archive.quarantine_source(src, q, "a/x.c4gh")
        assert not src.exists()
    assert (q / "a" / "x.c4gh").read_bytes() == b"first"
    assert (q / "a" / "x.c4gh.1").read_bytes() == b"second"


# ------------------------------------------------------------------ checksum sidecars
@pytest.mark.parametrize("algo", ["sha256", "md5"])
def test_sidecar_verifies_with_coreutils(algo: str, tmp_path: Path) -> None:
    f = tmp_path / "x.bam.c4gh"
    f.write_bytes(os.urandom(10_000))
    digest = checksum.hash_file(f, algo)
    assert digest == hashlib.new(algo, f.read_bytes()).hexdigest()
    side = checksum.write_sidecar(f, digest, algo, 0o640)
    assert side == tmp_path / f"x.bam.c4gh.{algo}"
    assert side.read_text() == f"{digest}  x.bam.c4gh\n"
    assert stat.S_IMODE(side.stat().st_mode) == 0o640
    p = subprocess.run([f"{algo}sum", "-c", side.name], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert checksum.check_sidecar(f) == (True, digest, digest)
    assert checksum.check_sidecar(side) == (True, digest, digest)
    assert [p.name for p in tmp_path.iterdir() if archive.is_temp_name(p.name)] == []


def test_sidecar_detects_tampering(tmp_path: Path) -> None:
    f = tmp_path / "x.c4gh"
    f.write_bytes(b"original")
    checksum.write_sidecar(f, checksum.hash_file(f), "sha256")
    f.write_bytes(b"tampered")
    ok, expected, found = checksum.check_sidecar(f)
    assert not ok and expected == hashlib.sha256(b"original").hexdigest()
    assert found == hashlib.sha256(b"tampered").hexdigest()


def test_sidecar_odd_names_match_coreutils(tmp_path: Path) -> None:
    f = tmp_path / "we\\ird\nname.c4gh"
    f.write_bytes(b"data")
    digest = checksum.hash_file(f)
    side = checksum.write_sidecar(f, digest, "sha256")
    ours = side.read_bytes()
    theirs = subprocess.run(["sha256sum", f.name], cwd=tmp_path, capture_output=True, check=True).stdout
    assert ours == theirs
    assert subprocess.run(["sha256sum", "-c", side.name], cwd=tmp_path, capture_output=True).returncode == 0
    assert checksum.check_sidecar(f)[0]


def test_write_sidecar_rejects_bad_digest(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        checksum.write_sidecar(tmp_path / "x", "abc", "sha256")
    with pytest.raises(ValueError):
        checksum.write_sidecar(tmp_path / "x", "ab" * 32, "sha1")
    assert list(tmp_path.iterdir()) == []


def test_check_sidecar_missing_or_malformed(tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_bytes(b"x")
    with pytest.raises(FileNotFoundError):
        checksum.check_sidecar(f)
    (tmp_path / "x.sha256").write_text("garbage\n")
    with pytest.raises(ValueError):
        checksum.check_sidecar(f)
    (tmp_path / "x.sha256").write_text(f"{'ab' * 32}  ../etc/passwd\n")
    with pytest.raises(ValueError, match="bare file name"):
        checksum.check_sidecar(f)


@pytest.mark.parametrize("refuse", [False, True])
def test_a_big_file_is_sent_to_disk_as_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refuse: bool
) -> None:
    """Every WRITEBACK_EVERY bytes the written stretch's writeback is started (so the final fsync waits for
    the last stretch only); a file system that refuses the hint only stops the hinting: same bytes, durable."""
    monkeypatch.setattr(archive, "WRITEBACK_EVERY", 1000)
    hints: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        hints.append((offset, length))
        if refuse:
            raise OSError(22, "Invalid argument")
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    data = os.urandom(3500)
    w = archive.TempArchiveFile(tmp_path / "big.c4gh")
    for i in range(0, len(data), 700):
        w.write(data[i : i + 700])
    assert w.finish() == hashlib.sha256(data).hexdigest()
    w.commit()
    assert (tmp_path / "big.c4gh").read_bytes() == data
    assert hints == ([(0, 1400)] if refuse else [(0, 1400), (1400, 1400)])  # contiguous, nothing twice
