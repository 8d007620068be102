"""The tracking database schema: creation, idempotence, version, 64-bit sizes, real timestamps, and the
connection errors that must never show a password."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from legampi.db import SCHEMA_VERSION
from tests.conftest import LEGAMPI, PG_DSN, Workspace

PG_PASSWORD = "Pg-Pw-Pangolin-6617"


def test_init_db_creates_schema_and_is_idempotent(bare_workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = bare_workspace
    r = dbh.run(ws, "status")
    assert r.returncode == 2 and "no legampi schema; run `legampi init-db` first" in r.stderr
    first = ws.legampi("init-db")  # the real executable
    assert first.stdout.strip().endswith(f"schema version none -> {SCHEMA_VERSION}")
    before = dbh.dump(ws.db_url)
    assert [row[0] for row in before["schema_version"]] == [SCHEMA_VERSION]
    assert all(not rows for t, rows in before.items() if t != "schema_version")
    second = dbh.ok(ws, "init-db")
    assert second.stdout.strip().endswith(f"schema version {SCHEMA_VERSION} -> {SCHEMA_VERSION}")
    assert dbh.dump(ws.db_url) == before


def test_schema_version_is_recorded_with_a_timestamp(workspace: Workspace, dbh: SimpleNamespace) -> None:
    db = dbh.connect(workspace.db_url)
    assert db.schema_version() == SCHEMA_VERSION
    [row] = db.query("SELECT version, applied_at FROM schema_version")
    assert row["version"] == SCHEMA_VERSION and row["applied_at"]


def test_sizes_are_64_bit_and_dataset_totals_true(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    big, other = 5_000_000_000_000, 3_000_000_000
    md5a, md5b = "a" * 32, "b" * 32
    man = ws.metadata / "EGAD_BIG.tab"
    man.write_text(f"huge.bam.c4gh\t{md5a}\t{big}\nbig.bam.c4gh\t{md5b}\t{other}\n")
    dbh.ok(ws, "register", str(man))
    data = dbh.status(ws)
    sizes = {f["file_name"]: f["size"] for f in data["files"]}
    assert sizes == {"huge.bam.c4gh": big, "big.bam.c4gh": other}
    [ds] = data["datasets"]
    assert ds["n_bytes"] == big + other and ds["n_bytes"] > 2**31 and ds["n_files"] == 2
    db = dbh.connect(ws.db_url)
    [row] = db.query("SELECT size FROM file WHERE file_name = ?", ("huge.bam.c4gh",))
    assert row["size"] == big and isinstance(row["size"], int)
    if db.backend == "postgresql":
        types = {
            (r["table_name"], r["column_name"]): r["data_type"]
            for r in db.query(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema()"
            )
        }
        for col in [
            ("file", "size"),
            ("file", "plain_size"),
            ("file", "archive_size"),
            ("dataset_log", "n_bytes"),
            ("trackingtable", "size"),
            ("job_rank", "bytes"),
        ]:
            assert types[col] == "bigint", col
        for col in [
            ("dataset_log", "date_requested"),
            ("dataset_log", "date_download_start"),
            ("dataset_log", "date_download_end"),
            ("dataset_log", "date_processing_end"),
            ("file", "updated_at"),
            ("file_event", "at"),
            ("trackingtable", "first_seen"),
        ]:
            assert types[col] == "timestamp with time zone", col


def test_timestamps_are_real_utc_timestamps(workspace: Workspace, dbh: SimpleNamespace) -> None:
    ws = workspace
    man = ws.metadata / "DS.tab"
    man.write_text(f"f.c4gh\t{'c' * 32}\n")
    t0 = dt.datetime.now(dt.timezone.utc)
    dbh.ok(ws, "register", str(man))
    t1 = dt.datetime.now(dt.timezone.utc)
    db = dbh.connect(ws.db_url)
    [ds] = db.datasets("DS")
    [f] = db.files("DS")
    [ev] = db.events(file_id="f.c4gh")
    for value in (ds["date_requested"], f["created_at"], f["updated_at"], ev["at"]):
        stamp = dt.datetime.fromisoformat(value)
        assert stamp.tzinfo is not None and t0 <= stamp <= t1, value
    # ordering by the column orders by time, on both backends
    rows = db.query("SELECT count(*) AS n FROM file_event WHERE at <= ?", (t1.isoformat(),))
    assert rows[0]["n"] == 1


def test_config_from_option_and_environment(tmp_path: Path, dbh: SimpleNamespace) -> None:
    """`-c PATH` and LEGAMPI_CONFIG select the configuration (and so the database); -c wins."""
    root_a, root_b = tmp_path / "a", tmp_path / "b"
    for root in (root_a, root_b):
        for d in ("receiving", "processing", "archive", "metadata", "keys"):
            (root / d).mkdir(parents=True)
        (root / "keys" / "archive.pub").write_text("not read by init-db\n")
    cfg_a = dbh.write_config(root_a, f"sqlite:///{root_a / 'a.db'}").read_text()
    cfg_b = dbh.write_config(root_b, f"sqlite:///{root_b / 'b.db'}").read_text()
    for root, text in ((root_a, cfg_a), (root_b, cfg_b)):  # only the public key is required
        lines = [x for x in text.splitlines() if "secret_key" not in x]
        (root / "legampi.ini").write_text("\n".join(lines) + "\n")
    env = dict(os.environ, LEGAMPI_CONFIG=str(root_a / "legampi.ini"))
    p = subprocess.run([LEGAMPI, "init-db"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert (root_a / "a.db").exists() and not (root_b / "b.db").exists()
    p = subprocess.run(
        [LEGAMPI, "-c", str(root_b / "legampi.ini"), "init-db"], capture_output=True, text=True, env=env, timeout=60
    )
    assert p.returncode == 0, p.stderr
    assert (root_b / "b.db").exists()
    assert str(root_b / "b.db") in p.stdout


@pytest.mark.parametrize(
    "url",
    ["postgresql://legampi_no_such_user@127.0.0.1:5432/test", "postgresql://legampi@127.0.0.1:1/test"],
    ids=["unknown-user", "unreachable-port"],
)
def test_postgresql_connection_errors_never_show_the_password(tmp_path: Path, dbh: SimpleNamespace, url: str) -> None:
    root = tmp_path / "ws"
    for d in ("receiving", "processing", "archive", "metadata", "keys"):
        (root / d).mkdir(parents=True)
    (root / "keys" / "archive.pub").write_text("x\n")
    pw_file = root / "db.pass"
    pw_file.write_text(PG_PASSWORD + "\n")
    text = dbh.write_config(root, url).read_text()
    text = text.replace(f"url = {url}", f"url = {url}\npasswd_file = {pw_file}")
    text = "\n".join(x for x in text.splitlines() if "secret_key" not in x) + "\n"
    (root / "legampi.ini").write_text(text)
    env = dict(os.environ, LEGAMPI_INBOX_PASSPHRASE=PG_PASSWORD + "-inbox")
    p = subprocess.run(
        [LEGAMPI, "--log-level", "debug", "-c", str(root / "legampi.ini"), "init-db"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert p.returncode == 2
    assert "cannot connect to PostgreSQL" in p.stderr and "127.0.0.1" in p.stderr
    assert ("does not exist" in p.stderr) if "no_such_user" in url else ("refused" in p.stderr)
    assert PG_PASSWORD not in p.stdout + p.stderr
    assert "Traceback" not in p.stderr


def test_postgresql_through_the_seed_keys(tmp_path: Path, dbh: SimpleNamespace) -> None:
    """host/user/db (the seed's keys) reach the same server as a URL would."""
    import psycopg2

    name = "t_" + uuid.uuid4().hex[:12]
    conn = psycopg2.connect(PG_DSN, connect_timeout=5)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE SCHEMA "{name}"')
    try:
        root = tmp_path / "ws"
        for d in ("receiving", "processing", "archive", "metadata", "keys"):
            (root / d).mkdir(parents=True)
        (root / "keys" / "archive.pub").write_text("x\n")
        text = (
            dbh.write_config(root, "unused")
            .read_text()
            .replace("url = unused", "host = 127.0.0.1\nport = 5432\nuser = postgres\ndb = test")
        )
        text = "\n".join(x for x in text.splitlines() if "secret_key" not in x) + "\n"
        (root / "legampi.ini").write_text(text)
        env = {"PGOPTIONS": f"-csearch_path={name}"}
        r = dbh.ok(SimpleNamespace(config=root / "legampi.ini"), "init-db", env=env)
        assert "postgresql://postgres@127.0.0.1:5432/test" in r.stdout
        cur = conn.cursor()
        cur.execute(f'SELECT version FROM "{name}".schema_version')
        assert cur.fetchall() == [(SCHEMA_VERSION,)]
    finally:
        conn.cursor().execute(f'DROP SCHEMA "{name}" CASCADE')
        conn.close()


def test_config_error_leaves_an_existing_database_and_workspace_untouched(
    workspace: Workspace, dbh: SimpleNamespace
) -> None:
    ws = workspace
    man = ws.metadata / "DS.tab"
    man.write_text(f"f.c4gh\t{'d' * 32}\n")
    dbh.ok(ws, "register", str(man))
    (ws.receiving / "f.c4gh").write_bytes(b"data")
    before = dbh.dump(ws.db_url)
    broken = ws.root / "broken.ini"
    broken.write_text(ws.config.read_text().replace(f"processing = {ws.processing}", f"processing = {ws.receiving}"))
    for args in (("monitor",), ("register", str(man)), ("init-db",), ("status",)):
        r = dbh.run(ws, *args, config=broken)
        assert r.returncode == 2 and r.stdout == ""
        assert f"{broken}: [workspaces] processing: is the same folder as receiving" in r.stderr
    assert dbh.dump(ws.db_url) == before
    assert (ws.receiving / "f.c4gh").read_bytes() == b"data"
