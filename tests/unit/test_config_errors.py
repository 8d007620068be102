"""Issue 12, findings 7-9 at the file level: configuration problems are kind `config` (never the file's,
never quarantined), gpg runs in a private home that caches no passphrase and is cleaned up, its
failures read as sentences, and scrubbing hides secrets only in text from outside legampi."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from legampi import stream
from legampi.formats import IngestError, openpgp
from legampi.formats.base import ERROR_KINDS
from legampi.stream import QUARANTINE_KINDS, process_file

GPG = shutil.which("gpg")
PASS = "Op-Gpg-Pass-3141"
COMMON_WORDS = ["wrong", "password", "legacy", "md5", "file"]
pytestmark = pytest.mark.skipif(GPG is None, reason="gpg not installed")


def joined(chunks) -> bytes:
    return b"".join(bytes(c) for c in chunks)


def close_homes() -> None:
    """End of a job for this process (the old code had no private homes: nothing to close)."""
    getattr(openpgp, "close_homes", lambda: None)()


def operator_home(folder: Path, uid: str, passphrase: str | None) -> Path:
    """A GnuPG home as an operator makes one: default agent settings (which cache passphrases)."""
    home = folder / uid.split("@")[0]
    home.mkdir(mode=0o700, parents=True)
    pw = ["--passphrase", passphrase or ""]
    subprocess.run(
        [GPG, "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", *pw]
        + ["--quick-gen-key", uid, "future-default", "default", "never"],
        check=True,
        capture_output=True,
    )
    return home


def kill_agent(home: Path) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, check=False)


def encrypt_for(home: Path, uid: str, plain: bytes, out: Path) -> Path:
    subprocess.run(
        [GPG, "--homedir", str(home), "--batch", "--yes", "--trust-model", "always", "-e", "-r", uid, "-o", str(out)],
        input=plain,
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture
def op_home(tmp_path: Path):
    home = operator_home(tmp_path / "gnupg", "op@example.org", PASS)
    yield home
    close_homes()
    kill_agent(home)


def agents_for(folder: Path) -> list[str]:
    """Command lines of running gpg-agents whose home is under FOLDER."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if "gpg-agent" in cmd and str(folder) in cmd and state != "Z":
                out.append(cmd)
    return out


# ------------------------------------------------------------------ finding 8: GnuPG home and agent
def test_passphrase_is_not_cached_from_one_job_to_the_next(op_home: Path, tmp_path: Path) -> None:
    enc = encrypt_for(op_home, "op@example.org", b"x" * 5000, tmp_path / "x.gpg")
    assert joined(openpgp.decrypt_stream(enc, op_home, PASS, label="x.gpg")) == b"x" * 5000
    # the same process (job) again, then a new job: neither may decrypt without the passphrase
    for _ in range(2):
        with pytest.raises(IngestError) as e:
            joined(openpgp.decrypt_stream(enc, op_home, None, label="x.gpg"))
        assert e.value.kind == "config", e.value
        assert "wrong or missing GnuPG passphrase ($LEGAMPI_GPG_PASSPHRASE" in str(e.value)
        assert "NEED_PASSPHRASE" not in str(e.value) and str(e.value).startswith("x.gpg: ")
        close_homes()


def test_private_home_is_a_0700_copy_removed_with_its_agent(
    op_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="lgt-", dir="/tmp"))  # short: gpg's sockets live in the home
    request.addfinalizer(lambda: shutil.rmtree(tmp, ignore_errors=True))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    enc = encrypt_for(op_home, "op@example.org", b"y" * 100, tmp_path / "y.gpg")
    before = {p.name: p.stat().st_mtime_ns for p in op_home.rglob("*") if p.is_file()}
    assert joined(openpgp.decrypt_stream(enc, op_home, PASS)) == b"y" * 100
    (home,) = list(tmp.iterdir())
    assert (home.stat().st_mode & 0o777) == 0o700
    assert "max-cache-ttl 0" in (home / "gpg-agent.conf").read_text()
    assert agents_for(home), "gpg started no agent for the private home (the test would prove nothing)"
    close_homes()
    assert list(tmp.iterdir()) == [] and agents_for(tmp) == []
    after = {p.name: p.stat().st_mtime_ns for p in op_home.rglob("*") if p.is_file()}
    assert after == before  # the configured home is never written


def test_home_without_secret_key_is_config_other_recipient_is_key(op_home: Path, tmp_path: Path) -> None:
    enc = encrypt_for(op_home, "op@example.org", b"z" * 100, tmp_path / "z.gpg")
    public_only = tmp_path / "public-only"
    public_only.mkdir(mode=0o700)
    shutil.copy(op_home / "pubring.kbx", public_only / "pubring.kbx")
    with pytest.raises(IngestError) as e:
        joined(openpgp.decrypt_stream(enc, public_only, PASS, label="z.gpg"))
    assert e.value.kind == "config" and "gnupg_home holds no secret key" in str(e.value)
    other = operator_home(tmp_path / "gnupg2", "other@example.org", PASS)
    try:
        with pytest.raises(IngestError) as e:
            joined(openpgp.decrypt_stream(enc, other, PASS, label="z.gpg"))
        assert e.value.kind == "key" and "not encrypted for any key in gnupg_home" in str(e.value)
    finally:
        close_homes()
        kill_agent(other)


def test_status_lines_are_translated() -> None:
    st = openpgp.parse_status(b"[GNUPG:] NEED_PASSPHRASE 1 2 18 0\n[GNUPG:] INQUIRE_MAXLEN 100\n")
    err = openpgp.classify_failure(st, 2, 0, "f.gpg")
    assert err.kind == "config" and "NEED_PASSPHRASE" not in str(err) and "passphrase" in str(err)
    st = openpgp.parse_status(b"[GNUPG:] ERROR pkdecrypt_failed 67108875\n[GNUPG:] DECRYPTION_FAILED\n")
    assert openpgp.classify_failure(st, 2, 0, "f.gpg").kind == "config"
    st = openpgp.parse_status(b"[GNUPG:] NODATA 1\n")
    assert openpgp.classify_failure(st, 2, 0, "f.gpg").kind == "format"
    st = openpgp.parse_status(b"[GNUPG:] BEGIN_DECRYPTION\n[GNUPG:] PLAINTEXT 62 0 x\n[GNUPG:] DECRYPTION_FAILED\n")
    assert openpgp.classify_failure(st, 2, 10, "f.gpg").kind == "corrupt"


# ------------------------------------------------------------------ finding 7: `config` is nobody's file
def test_config_kind_is_never_quarantined(ws, plaintexts, h) -> None:
    assert "config" in ERROR_KINDS and "config" not in QUARANTINE_KINDS
    src, data = plaintexts.make(5000)
    rel = "q/x.bam.cip"
    h.openssl_cip(src, h.LEGACY_PASSWORD, "aes128", ws.source(rel))
    before = h.snapshot(ws.source(rel))
    result = process_file(h.task_for(rel, data), ws.ctx(quarantine=ws.quarantine, legacy_password=None))
    assert result.error_kind == "config" and "legacy password" in result.error
    assert result.quarantined_to is None and h.snapshot(ws.source(rel)) == before
    assert list(ws.quarantine.rglob("*")) == []


def test_preflight_names_what_is_missing() -> None:
    from legampi.preflight import missing, needs

    names = [f"d/s{i}.bam.c4gh" for i in range(12)] + ["a.cip", "b.cip", "c.gpg", "plain.txt", "x.enc"]
    found = needs(names, (".c4gh", ".cip", ".gpg"))
    assert found == {"crypt4gh": Counter({".c4gh": 12}), "legacy_aes": Counter({".cip": 2}),
                     "openpgp": Counter({".gpg": 1}), "plain": Counter({".txt": 1})}  # fmt: skip
    crypto = SimpleNamespace(
        inbox_secret_key=None,
        legacy_password=None,
        legacy_password_env="SITE_LEGACY_PW",
        gnupg_home=Path("/etc/gnupg-node"),
        gpg_passphrase=None,
        gpg_passphrase_env="LEGAMPI_GPG_PASSPHRASE",
        decrypt_via="local",
    )
    home = Path("/etc/gnupg-node")
    out = missing(found, crypto, [True, True], home)
    assert out[0] == "[crypto] inbox_secret_key is not set, needed by 12 .c4gh file(s)"
    assert "$SITE_LEGACY_PW" in out[1] and "needed by 2 .cip file(s)" in out[1]
    assert "$LEGAMPI_GPG_PASSPHRASE" in out[2] and "needed by 1 .gpg file(s)" in out[2] and len(out) == 3
    assert missing(found, crypto, [True, False], home)[2:] == []  # an unprotected key needs no passphrase
    assert "holds no secret key" in missing(found, crypto, [], home)[2]
    assert "gnupg_home does not exist" in missing(found, crypto, None, home)[2]
    ready = SimpleNamespace(
        **{**vars(crypto), "inbox_secret_key": Path("k"), "legacy_password": "p", "gpg_passphrase": "g"}
    )
    assert missing(found, ready, [True], home) == []
    assert missing({"plain": Counter({"": 3})}, crypto) == []  # plaintext files need nothing
    via_res = SimpleNamespace(**{**vars(crypto), "decrypt_via": "res"})
    assert missing(found, via_res, None, home) == [out[0]]  # the service holds the legacy keys


# ------------------------------------------------------------------ finding 9: scrubbing
@pytest.mark.parametrize("secret", COMMON_WORDS)
def test_legampi_words_survive_a_common_word_secret(secret: str, ws, plaintexts, h) -> None:
    src, data = plaintexts.make(5000)
    rel = "legacy/file.bam.cip"
    h.openssl_cip(src, h.LEGACY_PASSWORD, "aes128", ws.source(rel))  # so `secret` is the wrong password
    ctx = ws.ctx(legacy_password=secret, gpg_passphrase=secret, res_source_key=secret)
    result = process_file(h.task_for(rel, data), ctx)
    md5 = hashlib.md5(data).hexdigest()
    assert result.error_kind == "checksum"
    assert result.error.startswith(f"{rel}: plaintext md5 mismatch: manifest expects {md5}, computed ")
    assert result.error.endswith(" (wrong legacy password?)"), result.error
    assert "***" not in result.error


@pytest.mark.parametrize("secret", COMMON_WORDS)
def test_secret_echoed_by_gpg_is_hidden(secret: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "gpg"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "fd = int(sys.argv[sys.argv.index('--passphrase-fd') + 1])\n"
        "pw = os.read(fd, 1000).decode().strip()\n"
        "sys.stderr.write(f'gpg: cannot use <<{pw}>> here\\n')\n"
        "sys.exit(2)\n"
    )
    fake.chmod(0o755)
    monkeypatch.setattr(openpgp, "GPG", str(fake))
    (tmp_path / "home").mkdir(mode=0o700)
    (tmp_path / "x.gpg").write_bytes(b"\x85" * 100)
    try:
        with pytest.raises(IngestError) as e:
            joined(openpgp.decrypt_stream(tmp_path / "x.gpg", tmp_path / "home", secret, label="legacy/file.gpg"))
    finally:
        close_homes()
    msg = str(e.value)
    assert f"<<{secret}>>" not in msg and "gpg said: cannot use <<***>> here" in msg, msg
    assert msg.startswith("legacy/file.gpg: gpg decryption failed (exit 2")


@pytest.mark.parametrize("secret", COMMON_WORDS)
def test_secret_in_an_unexpected_exception_is_hidden(secret: str, ws, plaintexts, h, monkeypatch) -> None:
    src, data = plaintexts.make(100)
    rel = "file.bam.c4gh"
    h.c4gh_encrypt(src, ws.keys.inbox.pub, ws.source(rel))

    def boom(*_a, **_k):
        raise RuntimeError(f"library says [{secret}]")

    monkeypatch.setattr(stream.c4gh, "encrypt_stream", boom)
    result = process_file(h.task_for(rel, data), ws.ctx(legacy_password=secret))
    assert result.error == f"{rel}: unexpected RuntimeError: library says [***]", result.error


def test_no_secret_reaches_a_child_command_line(op_home: Path, tmp_path: Path, monkeypatch) -> None:
    """The private home does not change how the passphrase travels: a pipe, never argv or environment."""
    enc = encrypt_for(op_home, "op@example.org", b"q" * 10, tmp_path / "q.gpg")
    seen = []
    real = subprocess.Popen

    def spy(args, **kw):
        seen.append((list(args), dict(kw.get("env") or os.environ)))
        return real(args, **kw)

    monkeypatch.setattr(openpgp.subprocess, "Popen", spy)
    assert joined(openpgp.decrypt_stream(enc, op_home, PASS)) == b"q" * 10
    args, env = seen[0]
    assert "--homedir" in args and args[args.index("--homedir") + 1] != str(op_home)
    assert not any(PASS in a for a in args) and not any(PASS in v for v in env.values())


def test_private_homes_of_killed_processes_are_swept(tmp_path: Path) -> None:
    """A SIGKILLed worker never runs its exit handler: the next gpg user of this host removes its home
    (a copy of the secret keys); homes of live processes stay."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{openpgp.HOME_PREFIX}{dead.pid}-x1"
    mine = tmp_path / f"{openpgp.HOME_PREFIX}{os.getpid()}-x2"
    other = tmp_path / f"{openpgp.HOME_PREFIX}1-x3"  # pid 1 always runs
    for d in (stale, mine, other):
        (d / "private-keys-v1.d").mkdir(parents=True)
        (d / "private-keys-v1.d" / "k.key").write_text("secret")
    assert openpgp.sweep_stale_homes(tmp_path) == [stale]
    assert not stale.exists() and mine.is_dir() and other.is_dir()
