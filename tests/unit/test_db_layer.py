"""The database layer's boundaries, read from the source: SQL and database drivers only in legampi/db/,
the schema files ordered and alike for both backends, and every package (with sql/) shipped in a wheel."""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

from legampi.db import DATASET_COLUMNS, DATASET_DATES, SCHEMA_VERSION, migrations, split_sql
from legampi.db.schema import ABSENT_VERSIONS, BACKENDS, sql_root

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "legampi"
DRIVERS = {"sqlite3", "psycopg2", "psycopg"}
# A statement in a string: legampi writes SQL keywords in capitals, prose does not.
SQL = re.compile(
    r"\b(SELECT\s+.+\s+FROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|CREATE\s+(TABLE|INDEX)|ALTER\s+TABLE)\b",
    re.DOTALL,
)


def outside_the_layer() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if (PACKAGE / "db") not in p.parents]


def test_database_drivers_are_imported_only_in_the_database_layer() -> None:
    found = []
    for path in outside_the_layer():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            found += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if n.split(".")[0] in DRIVERS]
    assert found == []


def test_sql_is_written_only_in_the_database_layer() -> None:
    found = []
    for path in outside_the_layer():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value[:60]!r}")
    assert found == []


def test_the_sql_pattern_finds_statements_and_not_prose() -> None:
    assert SQL.search("SELECT file_id FROM file WHERE x = ?")
    assert SQL.search("UPDATE file SET status = ?")
    assert SQL.search("DELETE FROM trackingtable")
    assert not SQL.search("select the files to archive from the manifest")
    assert not SQL.search("Update the dataset dates; insert into the archive")


def test_both_backends_have_the_same_numbered_steps() -> None:
    steps = {b: [(m.version, m.name) for m in migrations(b)] for b in BACKENDS}
    assert [v for v, _n in steps["sqlite"]] == [v for v in range(1, SCHEMA_VERSION + 1) if v not in ABSENT_VERSIONS]
    assert steps["sqlite"] == steps["postgresql"]
    assert steps["sqlite"][0][1] == "001_base.sql"
    on_disk = {b: sorted(p.name for p in (ROOT / "sql" / b).iterdir()) for b in BACKENDS}
    assert on_disk == {b: [n for _v, n in steps[b]] for b in BACKENDS}  # no stray file is skipped silently


def test_only_init_db_records_the_version() -> None:
    """A step that inserted its own version would give a fresh database one row per step."""
    for b in BACKENDS:
        for m in migrations(b):
            assert not [s for s in m.statements() if "schema_version (" in s and "INSERT" in s.upper()], m.name


def test_the_base_step_is_the_version_1_schema() -> None:
    """001_base.sql creates what 77a6f9d created (tests/db/fixtures), minus the version row."""
    fixtures = ROOT / "tests" / "db" / "fixtures"
    for b in BACKENDS:
        v1 = split_sql((fixtures / f"schema-v1-{b}.sql").read_text(encoding="utf-8"))
        assert migrations(b)[0].statements() == [s for s in v1 if not s.startswith("INSERT INTO schema_version")], b


def test_dataset_columns_follow_the_status_models_dates() -> None:
    assert DATASET_COLUMNS == ("dataset_id", "n_files", "n_bytes", *DATASET_DATES)


def test_the_schema_is_read_from_the_sql_folder() -> None:
    assert Path(str(sql_root())).resolve() == (ROOT / "sql").resolve()


def test_setup_cfg_ships_every_package_and_the_schema() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py") if "__pycache__" not in p.parts
    }
    assert listed == on_disk | {"legampi.sql"}
    assert cfg["options"]["package_dir"].split() == ["legampi.sql", "=", "sql"]
    assert cfg["options.package_data"]["legampi.sql"].strip() == "*/*.sql"
