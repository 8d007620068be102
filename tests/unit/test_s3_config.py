"""The S3 backend's pure parts: the [archive] section, where credentials may come from, the part size
and the provenance metadata (no server needed)."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest

from legampi.s3config import ArchiveConfig, ArchiveConfigError, from_section, resolve_credentials
from legampi.s3store import META_BUDGET, decode_provenance, encode_provenance
from legampi.s3writer import MAX_PART, MAX_PARTS, MIN_PART, MiB, part_size_for

TB = 1000**4


def test_archive_section_defaults_to_posix() -> None:
    assert from_section({}) == ArchiveConfig()
    assert from_section({"backend": "POSIX"}).backend == "posix"


def test_archive_section_s3() -> None:
    cfg = from_section(
        {
            "backend": "s3",
            "s3_endpoint": "http://127.0.0.1:8333/",
            "s3_bucket": "archive",
            "s3_prefix": "legampi",
            "s3_region": "eu-north-1",
        }
    )
    assert cfg == ArchiveConfig("s3", "http://127.0.0.1:8333", "archive", "legampi/", "eu-north-1")
    assert from_section({"backend": "s3", "s3_endpoint": "https://a.example", "s3_bucket": "abc"}).s3_prefix == ""
    assert (
        from_section({"backend": "s3", "s3_endpoint": "https://a", "s3_bucket": "abc", "s3_prefix": "a/b/"}).s3_prefix
        == "a/b/"
    )


@pytest.mark.parametrize(
    "values, key",
    [
        ({"backend": "ftp"}, "backend"),
        ({"backend": "s3", "s3_bucket": "abc"}, "s3_endpoint"),
        ({"backend": "s3", "s3_endpoint": "http://h"}, "s3_bucket"),
        ({"backend": "s3", "s3_endpoint": "ftp://h", "s3_bucket": "abc"}, "s3_endpoint"),
        ({"backend": "s3", "s3_endpoint": "http://u:p@h", "s3_bucket": "abc"}, "s3_endpoint"),
        ({"backend": "s3", "s3_endpoint": "http://h", "s3_bucket": "Bad_Name"}, "s3_bucket"),
        ({"backend": "s3", "s3_endpoint": "http://h", "s3_bucket": "abc", "s3_prefix": "/abs"}, "s3_prefix"),
        ({"backend": "s3", "s3_endpoint": "http://h", "s3_bucket": "abc", "s3_prefix": "a/../b"}, "s3_prefix"),
        ({"s3_buckett": "abc"}, "s3_buckett"),
    ],
)
def test_archive_section_refusals_name_the_key(values: dict[str, str], key: str) -> None:
    with pytest.raises(ArchiveConfigError) as exc:
        from_section(values)
    assert exc.value.key == key


@pytest.mark.parametrize("key", ["aws_secret_access_key", "s3_secret_key", "s3_access_key", "s3_password"])
def test_credentials_are_never_read_from_the_ini(key: str) -> None:
    with pytest.raises(ArchiveConfigError) as exc:
        from_section({"backend": "s3", "s3_endpoint": "http://h", "s3_bucket": "abc", key: "SeCrEt"})
    assert exc.value.key == key and "AWS_SECRET_ACCESS_KEY" in exc.value.message
    assert "SeCrEt" not in exc.value.message


def test_credentials_from_the_environment_hidden_and_not_picklable(tmp_path: Path) -> None:
    env = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value", "HOME": str(tmp_path)}
    c = resolve_credentials(env)
    assert (c.access_key, c.secret_key, c.source) == ("AKID", "s3cr3t-value", "environment")
    assert "s3cr3t-value" not in repr(c)
    with pytest.raises(TypeError):
        pickle.dumps(c)
    with pytest.raises(ArchiveConfigError, match="AWS_SECRET_ACCESS_KEY is not set"):
        resolve_credentials({"AWS_ACCESS_KEY_ID": "AKID", "HOME": str(tmp_path)})


def test_credentials_from_the_shared_file_and_its_profile(tmp_path: Path) -> None:
    creds = tmp_path / ".aws" / "credentials"
    creds.parent.mkdir()
    creds.write_text(
        "[default]\naws_access_key_id = D\naws_secret_access_key = dsecret\n"
        "[arch]\naws_access_key_id = A\naws_secret_access_key = asecret\naws_session_token = tok\n"
    )
    assert resolve_credentials({"HOME": str(tmp_path)}).access_key == "D"
    c = resolve_credentials({"HOME": str(tmp_path), "AWS_PROFILE": "arch"})
    assert (c.access_key, c.secret_key, c.session_token) == ("A", "asecret", "tok")
    assert "[arch]" in c.source and "asecret" not in repr(c)
    with pytest.raises(ArchiveConfigError, match="no profile"):
        resolve_credentials({"HOME": str(tmp_path), "AWS_PROFILE": "nope"})
    with pytest.raises(ArchiveConfigError, match="no S3 credentials"):
        resolve_credentials({"HOME": str(tmp_path / "elsewhere")})
    other = tmp_path / "other"
    other.write_text("[default]\naws_access_key_id = O\n")
    with pytest.raises(ArchiveConfigError, match="needs both"):
        resolve_credentials({"AWS_SHARED_CREDENTIALS_FILE": str(other)})


@pytest.mark.parametrize("size", [0, 1, 5 * MiB, 48 * 1024 * MiB, TB, 5 * TB, 5 * 1024**4])
def test_part_size_fits_the_object_in_10000_parts(size: int) -> None:
    part = part_size_for(size)
    assert MIN_PART <= part <= MAX_PART and part % MiB == 0
    assert -(-(size + size // 1000) // part) <= MAX_PARTS  # Crypt4GH adds < 0.05%
    if part > MIN_PART:  # the smallest such size: memory is one part
        assert -(-size // (part - MiB)) > MAX_PARTS * 0.99


def test_part_size_of_an_unknown_size_has_room_for_5_tib() -> None:
    assert part_size_for(None) * MAX_PARTS >= 5 * 1024**4
    assert part_size_for(None) < 600 * MiB


def test_provenance_metadata_round_trips_in_ascii() -> None:
    rec = {"file_id": "F1", "file_name": 'd/é "x".cip', "md5": "a" * 32, "sha256": None, "plain_size": 5}
    meta = encode_provenance(rec)
    assert all(v.isascii() for v in meta.values())
    assert decode_provenance(meta) == rec
    assert decode_provenance({}) is None
    assert decode_provenance({"legampi-provenance": "{not json"}) is None
    assert decode_provenance({"legampi-provenance": '{"other": 1}'}) is None


def test_a_name_too_long_for_metadata_is_stored_as_its_hash() -> None:
    name = "é/" * 400 + "f.cip"
    meta = encode_provenance({"file_id": "F1", "file_name": name})
    assert len(meta["legampi-provenance"]) <= META_BUDGET
    rec = decode_provenance(meta)
    assert rec == {"file_id": "F1", "file_name_sha256": hashlib.sha256(name.encode()).hexdigest()}


def test_keys_longer_than_s3_allows_are_named() -> None:
    from types import SimpleNamespace

    from legampi.s3store import S3Store

    fake = SimpleNamespace(key=lambda rel: "legampi/" + rel)
    assert S3Store.key_problem(fake, "a/b.c4gh") is None  # type: ignore[arg-type]
    assert "1024" in (S3Store.key_problem(fake, "é" * 510 + ".c4gh") or "")  # type: ignore[arg-type]


def _ini(tmp_path: Path, archive: str, end_storage: bool = True) -> Path:
    from tests.conftest import make_workspace

    ws = make_workspace(tmp_path, f"sqlite:///{tmp_path / 't.db'}")
    text = ws.config.read_text(encoding="utf-8")
    if not end_storage:
        text = "\n".join(line for line in text.splitlines() if not line.startswith("end_storage"))
    ws.config.write_text(text + "\n" + archive, encoding="utf-8")
    return ws.config


def test_config_reads_archive_and_end_storage_is_optional_with_s3(tmp_path: Path) -> None:
    from legampi import config, storage

    path = _ini(tmp_path, "[archive]\nbackend = s3\ns3_endpoint = http://127.0.0.1:9\ns3_bucket = arch\n", False)
    cfg = config.load(path, env={})
    assert cfg.archive == ArchiveConfig("s3", "http://127.0.0.1:9", "arch", "", "us-east-1")
    assert cfg.workspaces.end_storage is None
    assert storage.configured() == cfg.archive  # s3:// locations of this process open with it
    arch = storage.from_config(cfg)
    assert (arch.backend, arch.location("d/x.c4gh")) == ("s3", "s3://arch/d/x.c4gh")


def test_config_without_end_storage_is_refused_for_the_folder_archive(tmp_path: Path) -> None:
    from legampi import config

    with pytest.raises(config.ConfigError, match=r"\[workspaces\] end_storage: missing"):
        config.load(_ini(tmp_path, "", False), env={})


def test_an_archive_refusal_names_the_key_and_exits_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = _ini(tmp_path, "[archive]\nbackend = s3\ns3_endpoint = ftp://x\ns3_bucket = arch\n")
    p = subprocess.run([sys.executable, "-m", "legampi", "-c", str(path), "recover"], capture_output=True, text=True)
    assert p.returncode == 2 and "[archive] s3_endpoint: must be an http:// or https:// URL" in p.stderr, p.stderr
