"""Fixtures for the tracking-database tests: an in-process CLI runner, table dumps, the EGA API stand-in.

Most commands run in-process through `legampi.cli.main` (same code path as the console script, without a
fresh interpreter per call) so both backends together stay well under a minute; a few tests per
command run the real `legampi` executable through `Workspace.legampi` to cover the entry point too.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from legampi import cli
from legampi.config import DatabaseConfig
from legampi.db import Database
from tests.conftest import Workspace, load_stand_in, make_workspace, write_config

TABLES = ("schema_version", "trackingtable", "file", "filedataset", "dataset_log", "file_event", "job", "job_rank")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@contextlib.contextmanager
def _patched_env(env: dict[str, str] | None) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(ws: Workspace, *args: str, env: dict[str, str] | None = None, config: Path | None = None) -> Result:
    """`legampi -c CONFIG ARGS` in this process; stdout/stderr captured, root logging restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out, err = io.StringIO(), io.StringIO()
    try:
        with _patched_env(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(["-c", str(config or ws.config), *args])
            except SystemExit as exc:  # argparse usage errors
                code = int(exc.code or 0)
    finally:
        for h in root.handlers[:]:
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)
    return Result(code, out.getvalue(), err.getvalue())


def ok(ws: Workspace, *args: str, **kw: Any) -> Result:
    """Like run, but the command must succeed."""
    r = run(ws, *args, **kw)
    assert r.returncode == 0, f"legampi {' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def connect(url: str) -> Database:
    return Database.connect(DatabaseConfig(url=url))


def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every legampi table, sorted: two equal dumps mean nothing was written."""
    db = connect(url)
    try:
        out = {}
        for t in TABLES:
            cur = db.execute(f"SELECT * FROM {t}")
            out[t] = sorted((tuple(row) for row in cur.fetchall()), key=repr)
        return out
    finally:
        db.close()


def status(ws: Workspace, *args: str) -> dict[str, Any]:
    """`legampi status --json` parsed."""
    return json.loads(ok(ws, "status", "--json", *args).stdout)


def set_mtime(path: Path, mtime: float) -> None:
    """Set a file's mtime explicitly (no sleeping to make files 'old')."""
    os.utime(path, (mtime, mtime), follow_symlinks=False)


@pytest.fixture(scope="session")
def dbh() -> SimpleNamespace:
    """Helpers for the database tests (a fixture, because importing `conftest` is ambiguous)."""
    return SimpleNamespace(
        run=run, ok=ok, dump=dump, connect=connect, status=status, set_mtime=set_mtime, write_config=write_config
    )


def _make_workspace(tmp_path: Path, db_url: str, init: bool) -> Workspace:
    ws = make_workspace(tmp_path, db_url)
    if init:
        ok(ws, "init-db")
    return ws


@pytest.fixture
def bare_workspace(tmp_path: Path, db_url: str) -> Workspace:
    """Like `workspace` (both backends) but the schema is NOT initialised."""
    return _make_workspace(tmp_path, db_url, init=False)


@pytest.fixture
def sqlite_workspace(tmp_path: Path) -> Workspace:
    """A workspace on SQLite only, for behaviour that does not depend on the backend."""
    return _make_workspace(tmp_path, f"sqlite:///{tmp_path / 'tracking.db'}", init=True)


@pytest.fixture(scope="session")
def ega_api() -> SimpleNamespace:
    """tests/ega_api_server.py loaded by path (works whatever pytest's import mode and cwd)."""
    mod = load_stand_in("ega_api_server.py")
    return SimpleNamespace(Server=mod.EgaApiServer, file=mod.ega_file)
