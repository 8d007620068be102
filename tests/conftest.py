"""Shared fixtures: a complete legampi workspace (folders, keys, config) on SQLite or PostgreSQL.

Every database test runs on both backends: SQLite in the test's temp folder, PostgreSQL on the server
of this machine (127.0.0.1:5432, trust auth, database `test`) in a fresh schema per test.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

PG_DSN = os.environ.get("LEGAMPI_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
BIN = Path(sys.executable).parent
LEGAMPI = str(BIN / "legampi")
MPIEXEC = str(BIN / "mpiexec")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mpi: runs real mpiexec")
    config.addinivalue_line("markers", "slurm: submits jobs to the one-node Slurm cluster")


def _pg_schema() -> Iterator[str]:
    import psycopg2

    name = "t_" + uuid.uuid4().hex[:12]
    conn = psycopg2.connect(PG_DSN, connect_timeout=5)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE SCHEMA "{name}"')
    try:
        yield f"{PG_DSN}?options=-csearch_path%3D{name}"
    finally:
        conn.cursor().execute(f'DROP SCHEMA "{name}" CASCADE')
        conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tracking.db'}"
    else:
        yield from _pg_schema()


def make_keypair(folder: Path, name: str, passphrase: str | None = None) -> tuple[Path, Path]:
    """A Crypt4GH key pair written by the crypt4gh package (secret key mode 0600)."""
    from crypt4gh.keys.c4gh import generate

    sk, pk = folder / f"{name}.sec", folder / f"{name}.pub"
    generate(str(sk), str(pk), passphrase=passphrase.encode() if passphrase else None, comment=name.encode())
    os.chmod(sk, 0o600)
    return sk, pk


@dataclass
class Workspace:
    root: Path
    config: Path
    db_url: str
    receiving: Path
    processing: Path
    end_storage: Path
    metadata: Path
    inbox_sk: Path
    inbox_pk: Path
    archive_sk: Path
    archive_pk: Path

    def legampi(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the real `legampi` command with this workspace's config."""
        e = dict(os.environ, **(env or {}))
        p = subprocess.run(
            [LEGAMPI, "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            env=e,
            timeout=timeout,
            cwd=self.root,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"legampi {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
        return p

    def mpi(
        self, n: int, *args: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        """Run `mpiexec -n N legampi -c CONFIG ARGS` for real."""
        e = dict(os.environ, **(env or {}))
        p = subprocess.run(
            [MPIEXEC, "-n", str(n), LEGAMPI, "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            env=e,
            timeout=timeout,
            cwd=self.root,
        )
        if check and p.returncode != 0:
            raise AssertionError(
                f"mpiexec -n {n} legampi {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}"
            )
        return p

    def add_file(
        self, rel: str, size: int, where: str = "processing", fmt: str = "c4gh", data: bytes | None = None
    ) -> dict[str, str | int]:
        """Write an encrypted test file; returns its manifest entry (name, md5, sha256, size, plaintext)."""
        from legampi.formats.crypt4gh import encrypt_stream

        plain = data if data is not None else secrets.token_bytes(size)
        folder = self.processing if where == "processing" else self.receiving
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        from legampi.keys import load_public_key

        if fmt == "c4gh":
            with open(path, "wb") as fh:
                for chunk in encrypt_stream([plain], load_public_key(self.inbox_pk)):
                    fh.write(chunk)
        else:
            path.write_bytes(plain)
        return {
            "name": rel,
            "md5": hashlib.md5(plain).hexdigest(),
            "sha256": hashlib.sha256(plain).hexdigest(),
            "size": path.stat().st_size,
            "plain": plain,
        }

    def manifest(self, dataset: str, entries: list[dict], sha256: bool = False) -> Path:
        path = self.metadata / f"{dataset}.tab"
        lines = [f"{e['name']}\t{e['md5']}" + (f"\t{e['size']}\t{e['sha256']}" if sha256 else "") for e in entries]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path


def write_config(root: Path, db_url: str, extra: str = "") -> Path:
    cfg = root / "legampi.ini"
    cfg.write_text(
        f"""[database]
url = {db_url}

[func_conf]
age_limit = 0
pass_limit = 2
batch_size = 50
flush_interval = 0.5

[workspaces]
receiving = {root / "receiving"}
processing = {root / "processing"}
end_storage = {root / "archive"}
metadata = {root / "metadata"}

[crypto]
inbox_secret_key = {root / "keys" / "inbox.sec"}
archive_public_key = {root / "keys" / "archive.pub"}
archive_secret_key = {root / "keys" / "archive.sec"}
{extra}
""",
        encoding="utf-8",
    )
    return cfg


def make_workspace(tmp_path: Path, db_url: str) -> Workspace:
    """Folders, key pairs and a config under TMP_PATH/ws; the schema is not initialised."""
    root = tmp_path / "ws"
    for d in ("receiving", "processing", "archive", "metadata", "keys"):
        (root / d).mkdir(parents=True)
    isk, ipk = make_keypair(root / "keys", "inbox")
    ask, apk = make_keypair(root / "keys", "archive")
    cfg = write_config(root, db_url)
    return Workspace(
        root,
        cfg,
        db_url,
        root / "receiving",
        root / "processing",
        root / "archive",
        root / "metadata",
        isk,
        ipk,
        ask,
        apk,
    )


def load_stand_in(filename: str) -> ModuleType:
    """A stand-in server module of tests/ (e.g. res_server.py) loaded by path, once per session, so it
    imports the same whatever pytest's import mode and working directory."""
    path = Path(__file__).resolve().parent / filename
    name = f"legampi_tests_{path.stem}"
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def workspace(tmp_path: Path, db_url: str) -> Workspace:
    """Folders, key pairs and a config for one test, on each database backend, schema initialised."""
    ws = make_workspace(tmp_path, db_url)
    ws.legampi("init-db")
    return ws
