"""`Database.execute` takes qmark SQL on both backends, literal ``%`` included (psycopg2 reads ``%`` itself)."""

from __future__ import annotations

from types import SimpleNamespace

from tests.conftest import Workspace


def test_literal_percent_and_like_patterns(workspace: Workspace, dbh: SimpleNamespace) -> None:
    db = dbh.connect(workspace.db_url)
    try:
        with db.transaction():
            db.insert_many(
                "trackingtable",
                ("name", "size", "mtime", "passes", "first_seen", "last_seen"),
                [
                    ("100%/a.c4gh", 1, 1.0, 1, "2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"),
                    ("plain/b.c4gh", 2, 1.0, 1, "2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"),
                ],
            )
        assert db.query("SELECT '100%' AS p")[0]["p"] == "100%"
        rows = db.query("SELECT name FROM trackingtable WHERE name LIKE '%.c4gh' AND size > ? ORDER BY name", (1,))
        assert [r["name"] for r in rows] == ["plain/b.c4gh"]
        rows = db.query("SELECT name FROM trackingtable WHERE name LIKE ? || '%'", ("100%",))
        assert [r["name"] for r in rows] == ["100%/a.c4gh"]
        rows = db.query("SELECT name, ? AS q FROM trackingtable WHERE name LIKE '%\\%%' ESCAPE '\\'", ("x",))
        assert [(r["name"], r["q"]) for r in rows] == [("100%/a.c4gh", "x")]
    finally:
        db.close()
