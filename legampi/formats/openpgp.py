"""OpenPGP `.gpg` input, streamed through GnuPG's own `gpg` binary.

We run gpg rather than a Python OpenPGP library so key handling (agent, keyring, algorithms) is the
one the operators already trust. The passphrase goes through a pipe fd (never argv or environment),
success is read from --status-fd (DECRYPTION_OKAY and exit 0), and failures are explained from status
keywords; the only gpg words that reach a message are its last stderr line, with the passphrase removed.

gpg never runs on the configured gnupg_home itself: each process copies the key files into a private
0700 temporary home whose agent caches no passphrase (`PrivateHome`), and kills that agent and removes
the copy at exit. A gpg-agent of the operator's home would outlive the job and keep the passphrase:
a second run with no passphrase configured then succeeded.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from legampi.formats.base import IngestError, read_exact_into
from legampi.redact import redact

GPG = os.environ.get("LEGAMPI_GPG", "/usr/bin/gpg")
_STATUS_LIMIT = 1 << 20  # status output kept for parsing; gpg writes a few hundred bytes
_BAD_PASSPHRASE_CODE = 11  # GPG_ERR_BAD_PASSPHRASE, low 16 bits of an ERROR status code
PASSPHRASE_ENV = "LEGAMPI_GPG_PASSPHRASE"
# What decryption needs from a GnuPG home: keyrings, trust database, secret keys (gpg 2.1+ and 1.x).
_KEY_FILES = ("pubring.kbx", "pubring.gpg", "trustdb.gpg", "secring.gpg")
_SECRET_DIR = "private-keys-v1.d"
# No passphrase cache: every gpg run must be given the passphrase again.
AGENT_CONF = "default-cache-ttl 0\nmax-cache-ttl 0\nallow-loopback-pinentry\n"
_KEY_KIND = re.compile(rb"\((?:\d+:)?(protected-|shadowed-)?private-key")


def source_home(gnupg_home: Path | str | None) -> Path:
    """The GnuPG home keys are taken from: the configured one, else $GNUPGHOME, else ~/.gnupg."""
    if gnupg_home is not None:
        return Path(gnupg_home)
    return Path(os.environ.get("GNUPGHOME") or Path.home() / ".gnupg")


def secret_keys(home: Path) -> list[bool]:
    """One entry per secret key in HOME: True when it needs a passphrase (protected, or on a card)."""
    out = []
    folder = home / _SECRET_DIR
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        names = []
    for name in names:
        if name.endswith(".key"):
            with open(folder / name, "rb") as fh:
                m = _KEY_KIND.search(fh.read(4096))
            out.append(m is None or m.group(1) is not None)
    if (home / "secring.gpg").is_file() and (home / "secring.gpg").stat().st_size > 0:
        out.append(True)  # gpg 1.x secret keyring: gpg 2 migrates it; assume protected
    return out


def _temp_base() -> str:
    """Where private homes go: the temp folder, unless its path is too long for the agent's sockets.

    Without /run/user/UID, gpg puts its sockets (`S.gpg-agent.browser`...) in the home itself, and a
    Unix socket path has at most 107 bytes: a deep $TMPDIR (a job's scratch folder) makes gpg report
    "No secret key" instead of an error about the socket."""
    base = tempfile.gettempdir()
    if len(base) > 60 and os.access("/tmp", os.W_OK | os.X_OK):
        return "/tmp"
    return base


HOME_PREFIX = "legampi-gnupg-"  # + "<pid>-<random>": the pid tells a killed process's home


class PrivateHome:
    """A private 0700 copy of a GnuPG home for this process, with an agent that caches nothing."""

    def __init__(self, source: Path) -> None:
        self.source = source
        base = _temp_base()
        sweep_stale_homes(Path(base))
        self.path = Path(tempfile.mkdtemp(prefix=f"{HOME_PREFIX}{os.getpid()}-", dir=base))  # mode 0700
        try:
            for name in _KEY_FILES:
                if (source / name).is_file():
                    shutil.copy2(source / name, self.path / name)
            if (source / _SECRET_DIR).is_dir():
                shutil.copytree(source / _SECRET_DIR, self.path / _SECRET_DIR)
            (self.path / "gpg-agent.conf").write_text(AGENT_CONF, encoding="ascii")
            self.keys = secret_keys(self.path)
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    def close(self) -> None:
        """Kill the agent gpg started for this home (if any), then remove the copy."""
        _remove_home(self.path)


def _remove_home(path: Path) -> None:
    gpgconf = shutil.which("gpgconf", path=os.path.dirname(GPG)) or shutil.which("gpgconf")
    if gpgconf is not None:
        subprocess.run(
            [gpgconf, "--homedir", str(path), "--kill", "gpg-agent"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    shutil.rmtree(path, ignore_errors=True)


def sweep_stale_homes(base: Path) -> list[Path]:
    """Remove private homes (copies of secret keys, maybe a live agent) left by processes of this host
    that were killed before their exit handler ran; a home whose pid still runs is left alone."""
    removed: list[Path] = []
    if not os.path.isdir("/proc/self"):  # no way to tell a dead pid here: leave everything alone
        return removed
    for home in base.glob(HOME_PREFIX + "*"):
        pid = home.name[len(HOME_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or os.path.exists(f"/proc/{pid}"):
            continue
        if home.is_dir() and not home.is_symlink() and home.stat().st_uid == os.getuid():
            _remove_home(home)
            removed.append(home)
    return removed


_homes: dict[Path, PrivateHome] = {}
_homes_lock = threading.Lock()


def private_home(gnupg_home: Path | str | None, label: str = "<stream>") -> PrivateHome:
    """This process's private copy of GNUPG_HOME, made at first use; a copy failure is a config error."""
    source = source_home(gnupg_home)
    with _homes_lock:
        home = _homes.get(source)
        if home is None:
            if not source.is_dir():
                raise IngestError(
                    "config",
                    f"{label}: no GnuPG home at {source} ([crypto] gnupg_home "
                    + ("names a missing folder)" if gnupg_home is not None else "is not set)"),
                )
            try:
                home = PrivateHome(source)
            except OSError as e:
                raise IngestError(
                    "config", f"{label}: cannot copy the keys of gnupg_home {source}: {e.strerror or type(e).__name__}"
                ) from None
            _homes[source] = home
        return home


def close_homes() -> None:
    """Kill the agents of this process's private homes and remove them (also run at exit)."""
    with _homes_lock:
        homes = list(_homes.values())
        _homes.clear()
    for home in homes:
        home.close()


atexit.register(close_homes)


class _Drain(threading.Thread):
    """Read a pipe to EOF in the background so gpg never blocks on a full stderr/status pipe."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.data = bytearray()

    def run(self) -> None:
        with open(self.fd, "rb", buffering=0, closefd=True) as f:
            while True:
                block = f.read(65536)
                if not block:
                    return
                if len(self.data) < _STATUS_LIMIT:
                    self.data += block


def parse_status(raw: bytes) -> dict[str, list[str]]:
    """Map each `[GNUPG:] KEYWORD args` line to its arguments (a keyword may repeat)."""
    out: dict[str, list[str]] = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        if not line.startswith("[GNUPG:] "):
            continue
        parts = line[9:].split(" ", 1)
        out.setdefault(parts[0], []).append(parts[1] if len(parts) > 1 else "")
    return out


_PASSPHRASE = f"wrong or missing GnuPG passphrase (${PASSPHRASE_ENV}, or [crypto] gpg_passphrase_env/_file)"
# Status keywords that say nothing about why decryption failed (left out of fallback messages).
_INFO = {"KEY_CONSIDERED", "ENC_TO", "PLAINTEXT", "USERID_HINT", "NEED_PASSPHRASE", "INQUIRE_MAXLEN"}


def classify_failure(
    status: dict[str, list[str]],
    returncode: int,
    produced: int,
    label: str,
    *,
    home_has_keys: bool = True,
    gpg_said: str = "",
) -> IngestError:
    """Turn gpg's status keywords into an operator-facing error.

    Kinds: `config` for the operator's side (passphrase wrong or missing, no secret key at all in the
    home), `key` for a file encrypted for someone else, `format`/`truncated`/`corrupt` for the file's
    bytes. GPG_SAID (gpg's last stderr line, already stripped of secrets) appears only when no keyword
    explains the failure."""
    for arg in status.get("ERROR", []):
        fields = arg.split()
        if (
            len(fields) >= 2
            and fields[0] == "pkdecrypt_failed"
            and fields[1].isdigit()
            and int(fields[1]) & 0xFFFF == _BAD_PASSPHRASE_CODE
        ):
            return IngestError("config", f"{label}: gpg could not unlock the secret key: {_PASSPHRASE}")
    started = "BEGIN_DECRYPTION" in status
    asked = ("NEED_PASSPHRASE" in status or "NEED_PASSPHRASE_SYM" in status) and not started
    if "BAD_PASSPHRASE" in status or "MISSING_PASSPHRASE" in status or asked:
        return IngestError("config", f"{label}: gpg could not unlock the secret key: {_PASSPHRASE}")
    if "NO_SECKEY" in status and "DECRYPTION_KEY" not in status:
        if not home_has_keys:
            return IngestError("config", f"{label}: gnupg_home holds no secret key, so gpg cannot decrypt any file")
        return IngestError(
            "key", f"{label}: not encrypted for any key in gnupg_home (encrypted for another recipient?)"
        )
    if "NODATA" in status and not started:
        return IngestError("format", f"{label}: not OpenPGP data (gpg found no encrypted message)")
    declared = status.get("PLAINTEXT_LENGTH")
    if declared and declared[0].strip().isdigit() and produced < int(declared[0].strip()):
        return IngestError(
            "truncated",
            f"{label}: gpg produced {produced} of {declared[0].strip()} declared "
            "plaintext bytes: the file is truncated",
        )
    if "BADMDC" in status:
        return IngestError(
            "corrupt", f"{label}: OpenPGP integrity check failed (BADMDC): the file is corrupted or truncated"
        )
    if "DECRYPTION_FAILED" in status and not {"DECRYPTION_INFO", "PLAINTEXT"} & status.keys():
        return IngestError(
            "key",
            f"{label}: gpg could not decrypt the session key (no secret key in gnupg_home opens it, "
            "or the file is damaged)",
        )
    if "DECRYPTION_FAILED" in status:
        return IngestError("corrupt", f"{label}: OpenPGP decryption failed after it began: the file is corrupted")
    keywords = " ".join(k for k in status if k not in _INFO)
    said = f"; gpg said: {gpg_said}" if gpg_said else ""
    return IngestError(
        "corrupt", f"{label}: gpg decryption failed (exit {returncode}; status: {keywords or 'none'}{said})"
    )


def last_words(stderr: bytes, secrets: list[str], limit: int = 200) -> str:
    """gpg's last `gpg: ...` stderr line, secrets removed, bounded: text from outside, made safe."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    if not lines:
        return ""
    line = redact(lines[-1], secrets)
    line = line[5:] if line.startswith("gpg: ") else line
    return "".join(c if c.isprintable() else "?" for c in line[:limit])


def decrypt_stream(
    src: BinaryIO | str | os.PathLike,
    gnupg_home: Path | str | None,
    passphrase: str | None,
    chunk_size: int = 4 << 20,
    label: str = "<stream>",
) -> Iterator[memoryview]:
    """Plaintext chunks of an OpenPGP file; gpg is killed and reaped if the caller stops early.

    A generator: gpg starts at the first next(), so a pipeline that fails before reading leaks no child.
    """
    if passphrase is not None and ("\n" in passphrase or "\r" in passphrase):
        raise IngestError(
            "config", f"{label}: the GnuPG passphrase contains a newline, which gpg cannot read from an fd"
        )
    home = private_home(gnupg_home, label)
    own = isinstance(src, (str, os.PathLike))
    source: BinaryIO = open(src, "rb", buffering=0) if isinstance(src, (str, os.PathLike)) else src
    # no --quiet: with it gpg 2.2 omits the `ERROR pkdecrypt_failed` status that names a bad passphrase
    args = [GPG, "--batch", "--no-tty", "--no-auto-check-trustdb", "--pinentry-mode", "loopback"]
    args += ["--no-symkey-cache", "--homedir", str(home.path)]
    pass_fds: list[int] = []
    pw_r = pw_w = None
    status_r, status_w = os.pipe()
    try:
        if passphrase is not None:
            pw_r, pw_w = os.pipe()
            os.write(pw_w, passphrase.encode("utf-8") + b"\n")  # far below the pipe buffer: no blocking
            os.close(pw_w)
            pw_w = None
            args += ["--passphrase-fd", str(pw_r)]
            pass_fds.append(pw_r)
        args += ["--status-fd", str(status_w), "--output", "-", "--decrypt"]
        pass_fds.append(status_w)
        env = dict(os.environ, LC_ALL="C", LANG="C")
        env.pop("GNUPGHOME", None)
        try:
            proc = subprocess.Popen(
                args,
                stdin=source,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=pass_fds,
                env=env,
                bufsize=0,
                close_fds=True,
            )
        except OSError as e:
            raise IngestError("config", f"{label}: cannot run {GPG}: {e.strerror}") from None
    except BaseException:
        for fd in (pw_r, pw_w, status_r, status_w):
            if fd is not None:
                os.close(fd)
        if own:
            source.close()
        raise
    if pw_r is not None:
        os.close(pw_r)
    os.close(status_w)
    assert proc.stdout is not None and proc.stderr is not None  # both are PIPEs
    status_thread = _Drain(status_r)
    stderr_thread = _Drain(os.dup(proc.stderr.fileno()))
    proc.stderr.close()
    status_thread.start()
    stderr_thread.start()
    secrets = [passphrase] if passphrase else []
    yield from _run(proc, status_thread, stderr_thread, source if own else None, chunk_size, label, home, secrets)


def _run(
    proc: subprocess.Popen[bytes],
    status_thread: _Drain,
    stderr_thread: _Drain,
    own_source: BinaryIO | None,
    chunk_size: int,
    label: str,
    home: PrivateHome,
    secrets: list[str],
) -> Iterator[memoryview]:
    assert proc.stdout is not None
    stdout = proc.stdout
    size = max(65536, chunk_size - chunk_size % 65536)
    buf = bytearray(size)
    view = memoryview(buf)
    produced = 0
    finished = False
    try:
        while True:
            n = read_exact_into(stdout, buf)
            if n == 0:
                break
            produced += n
            yield view[:n]
            if n < size:
                break
        returncode = proc.wait()
        status_thread.join()
        stderr_thread.join()
        finished = True
        status = parse_status(bytes(status_thread.data))
        ok = returncode == 0 and "DECRYPTION_OKAY" in status and not {"DECRYPTION_FAILED", "BADMDC"} & status.keys()
        if not ok:
            said = last_words(bytes(stderr_thread.data), secrets)
            raise classify_failure(status, returncode, produced, label, home_has_keys=bool(home.keys), gpg_said=said)
    finally:
        if not finished and proc.poll() is None:
            proc.kill()
        proc.wait()
        stdout.close()
        status_thread.join()
        stderr_thread.join()
        if own_source is not None:
            own_source.close()
