"""`legampi demo`: the whole pipeline on a fresh machine with the embedded default, in one folder.

Throwaway inbox and archive key pairs, a dataset of a few dozen encrypted files of mixed sizes and its
manifest, then the operator's real sequence: init-db, register, monitor passes until the transfer is
seen as finished, `process` under the packaged mpiexec with several ranks, and the status table.
Nothing outside the demo folder is touched. With `--archive s3` the archive is a bucket on a local
SeaweedFS (`weed mini`, legampi.s3local) started under the demo folder for the run and stopped after it.
"""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any, TextIO

from .testdata import make_dataset, sizes_from_spec

# crypt4gh's key writer prints this (a print to stderr, not a `warnings` warning) for a key without a
# passphrase. The demo's throwaway keys are unencrypted on purpose (a newcomer's next commands and
# `crypt4gh decrypt` need no passphrase), so this one line is expected noise; anything else is passed on.
UNENCRYPTED_KEY_NOTICE = "WARNING: The private key is not encrypted"


def _keypair(folder: Path, name: str) -> tuple[Path, Path]:
    """A throwaway Crypt4GH key pair, written without crypt4gh's notice about the missing passphrase."""
    from crypt4gh.keys.c4gh import generate

    sk, pk = folder / f"{name}.sec", folder / f"{name}.pub"
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        generate(str(sk), str(pk), passphrase=None, comment=f"legampi demo {name}".encode())
    rest = [line for line in said.getvalue().splitlines(keepends=True) if line.strip() != UNENCRYPTED_KEY_NOTICE]
    sys.stderr.write("".join(rest))
    os.chmod(sk, 0o600)
    return sk, pk


def mpiexec_path() -> str:
    """The mpiexec next to this Python (the PyPI mpich wheel's in a venv), else the one `pip install
    --user` put in the user's scripts folder (~/.local/bin, often not on PATH), else the one on PATH."""
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts", f"{os.name}_user"))):
        local = folder / "mpiexec"
        if local.exists():
            return str(local)
    found = shutil.which("mpiexec")
    if not found:
        raise FileNotFoundError("mpiexec not found: `pip install mpich` or load the site's MPI module")
    return found


def run(folder: Path | None, files: int, ranks: int, out: TextIO | None = None, archive: str = "posix") -> int:
    """The demo in FOLDER (default: a new temporary folder); ARCHIVE `posix` (a folder) or `s3`."""
    out = out or sys.stdout
    if archive not in ("posix", "s3"):
        raise ValueError(f"archive must be posix or s3, got {archive!r}")
    root = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="legampi-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        print(f"legampi demo: {root} is not empty; give a new or empty folder", file=sys.stderr)
        return 2
    for d in ("receiving", "processing", "archive", "metadata", "keys"):
        (root / d).mkdir()
    server, env, section = _s3(root, out) if archive == "s3" else (None, dict(os.environ), "")
    try:
        return _run(root, files, ranks, out, env, section, server)
    finally:
        if server is not None:
            server.stop()
            print(f"(the local S3 server was stopped; its data stays in {server.folder})", file=out)


def _s3(root: Path, out: TextIO) -> tuple[Any, dict[str, str], str]:
    """A local S3 server under ROOT/s3 with a bucket, the environment with its keys, the [archive]."""
    from .s3config import ArchiveConfig
    from .s3local import LocalS3
    from .s3store import S3Store

    (root / "s3").mkdir()
    server = LocalS3(root / "s3").start()
    print(f"local S3 server (SeaweedFS) on {server.endpoint}, data in {root / 's3'}", file=out)
    S3Store(ArchiveConfig("s3", server.endpoint, "archive"), server.credentials).client.create_bucket(Bucket="archive")
    c = server.credentials
    env = dict(os.environ, AWS_ACCESS_KEY_ID=c.access_key, AWS_SECRET_ACCESS_KEY=c.secret_key)
    section = f"\n[archive]\nbackend = s3\ns3_endpoint = {server.endpoint}\ns3_bucket = archive\ns3_prefix = legampi/\n"
    return server, env, section


def _run(root: Path, files: int, ranks: int, out: TextIO, env: dict[str, str], section: str, server: Any) -> int:
    inbox_sk, inbox_pk = _keypair(root / "keys", "inbox")
    archive_sk, archive_pk = _keypair(root / "keys", "archive")
    cfg = root / "legampi.ini"
    cfg.write_text(
        f"""# legampi demo configuration (embedded default: SQLite, local folders)
[database]
url = sqlite:///{root / "tracking.db"}

[func_conf]
# the demo does not wait for real transfers: files older than 0 s, unchanged over 2 passes, have arrived
age_limit = 0
pass_limit = 2

[workspaces]
receiving = {root / "receiving"}
processing = {root / "processing"}
end_storage = {root / "archive"}
metadata = {root / "metadata"}

[crypto]
inbox_secret_key = {inbox_sk}
archive_public_key = {archive_pk}
archive_secret_key = {archive_sk}
{section}""",
        encoding="utf-8",
    )
    from crypt4gh.keys import get_public_key

    sizes = sizes_from_spec(files, None, "lognormal:256KiB,1.5", seed=7)
    print(
        f"legampi demo in {root}: writing {files} Crypt4GH files "
        f"({sum(sizes) / 1e6:.1f} MB of plaintext) into receiving/",
        file=out,
    )
    make_dataset(
        root / "receiving", root / "metadata", "EGAD00000000001", sizes, "c4gh", inbox_pk=get_public_key(str(inbox_pk))
    )
    legampi = [sys.executable, "-m", "legampi", "--log-level", "warning", "-c", str(cfg)]
    steps = [("init-db",), ("register", str(root / "metadata" / "EGAD00000000001.json"))]
    steps += [("monitor",)] * 3
    for step in steps:
        code = _step(legampi, step, out, env)
        if code != 0:
            return code
    print(f"$ mpiexec -n {ranks} legampi process", file=out, flush=True)
    code = subprocess.run([mpiexec_path(), "-n", str(ranks), *legampi, "process"], env=env).returncode
    _step(legampi, ("status", "--brief"), out, env)
    decrypt = f"crypt4gh decrypt --sk {shlex.quote(str(archive_sk))} < FILE.c4gh"
    where = f"s3://archive/legampi/ on {server.endpoint}" if server is not None else str(root / "archive")
    print(f"\nArchive: {where} (decrypt a file with: {decrypt})", file=out)
    print(f"Config:  {cfg}", file=out)
    for i, line in enumerate(next_steps(cfg, root)):
        print(f"{'Next:' if i == 0 else '':<9}{line}", file=out)
    return code


def _step(legampi: list[str], step: tuple[str, ...], out: TextIO, env: dict[str, str] | None = None) -> int:
    """Run one operator command as the demo shows it; a failure is said in one line (the command's own
    error is above it: a traceback of the demo's would only bury it)."""
    print(f"$ legampi {' '.join(step)}", file=out, flush=True)
    code = subprocess.run([*legampi, *step], env=env).returncode
    if code != 0:
        print(f"legampi demo: `legampi {step[0]}` failed (exit {code}); stopped", file=sys.stderr)
    return code


def next_steps(cfg: Path, root: Path) -> list[str]:
    """What an operator runs after an ingestion, as commands to paste: look, report, audit the archive
    (one rank here; `mpiexec -n N` in front spreads it)."""
    c = shlex.quote(str(cfg))
    return [
        f"legampi -c {c} status",
        f"legampi -c {c} report -o {shlex.quote(str(root / 'report.html'))}",
        f"legampi -c {c} verify-archive --decrypt",
    ]
