"""OpenPGP `.gpg` input, streamed through GnuPG's own `gpg` binary.

We run gpg rather than a Python OpenPGP library so key handling (agent, keyring, algorithms) is the
one the operators already trust. The passphrase goes through a pipe fd (never argv or environment),
success is read from --status-fd (DECRYPTION_OKAY and exit 0), and gpg's stderr is never copied into
errors: our messages name only status keywords.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from legampi.formats import IngestError, read_exact_into

GPG = os.environ.get("LEGAMPI_GPG", "/usr/bin/gpg")
_STATUS_LIMIT = 1 << 20  # status output kept for parsing; gpg writes a few hundred bytes
_BAD_PASSPHRASE_CODE = 11  # GPG_ERR_BAD_PASSPHRASE, low 16 bits of an ERROR status code


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


def classify_failure(status: dict[str, list[str]], returncode: int, produced: int, label: str) -> IngestError:
    """Turn gpg's status keywords into an operator-facing error (no stderr, no secrets)."""
    for arg in status.get("ERROR", []):
        fields = arg.split()
        if (
            len(fields) >= 2
            and fields[0] == "pkdecrypt_failed"
            and fields[1].isdigit()
            and int(fields[1]) & 0xFFFF == _BAD_PASSPHRASE_CODE
        ):
            return IngestError("key", f"{label}: gpg could not unlock the secret key: wrong gpg passphrase")
    if "BAD_PASSPHRASE" in status or "MISSING_PASSPHRASE" in status:
        return IngestError("key", f"{label}: gpg could not unlock the secret key: wrong or missing gpg passphrase")
    if "NO_SECKEY" in status and "DECRYPTION_KEY" not in status:
        return IngestError(
            "key", f"{label}: no secret key in the gnupg home opens this file (encrypted for another recipient?)"
        )
    if "NODATA" in status and "BEGIN_DECRYPTION" not in status:
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
    if "DECRYPTION_FAILED" in status and not {"DECRYPTION_INFO", "PLAINTEXT", "BADMDC"} & status.keys():
        return IngestError(
            "key",
            f"{label}: gpg could not decrypt the session key (wrong gpg passphrase or "
            "no matching secret key in the gnupg home)",
        )
    keywords = " ".join(k for k in status if k not in ("KEY_CONSIDERED", "ENC_TO", "PLAINTEXT"))
    return IngestError("corrupt", f"{label}: gpg decryption failed (exit {returncode}; status: {keywords or 'none'})")


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
        raise IngestError("key", f"{label}: the gpg passphrase contains a newline, which gpg cannot read from an fd")
    own = isinstance(src, (str, os.PathLike))
    source = open(src, "rb", buffering=0) if own else src
    # no --quiet: with it gpg 2.2 omits the `ERROR pkdecrypt_failed` status that names a bad passphrase
    args = [GPG, "--batch", "--no-tty", "--no-auto-check-trustdb", "--pinentry-mode", "loopback"]
    if gnupg_home is not None:
        args += ["--homedir", str(gnupg_home)]
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
        if gnupg_home is not None:
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
            raise IngestError("io", f"{label}: cannot run {GPG}: {e.strerror}") from None
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
    status_thread = _Drain(status_r)
    stderr_thread = _Drain(os.dup(proc.stderr.fileno()))
    proc.stderr.close()
    status_thread.start()
    stderr_thread.start()
    yield from _run(proc, status_thread, stderr_thread, source if own else None, chunk_size, label)


def _run(
    proc: subprocess.Popen,
    status_thread: _Drain,
    stderr_thread: _Drain,
    own_source: BinaryIO | None,
    chunk_size: int,
    label: str,
) -> Iterator[memoryview]:
    size = max(65536, chunk_size - chunk_size % 65536)
    buf = bytearray(size)
    view = memoryview(buf)
    produced = 0
    finished = False
    try:
        while True:
            n = read_exact_into(proc.stdout, buf)
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
            raise classify_failure(status, returncode, produced, label)
    finally:
        if not finished and proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        status_thread.join()
        stderr_thread.join()
        if own_source is not None:
            own_source.close()
