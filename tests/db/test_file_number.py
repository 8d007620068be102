"""file_number: each file's registration number, given by the database (1, 2, ... in registration order,
never changed), and the array shares it makes: task `branch` of `branches` takes file number =
branch + branches*n, whatever is registered or archived in between. Both backends."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from legampi import config, manifest, registration
from legampi.claims import candidates
from legampi.db import Database
from tests.conftest import LEGAMPI, Workspace


@pytest.fixture
def opened(workspace: Workspace) -> Iterator[SimpleNamespace]:
    cfg = config.load(workspace.config)
    db = Database.connect(cfg.database)
    yield SimpleNamespace(cfg=cfg, db=db)
    db.close()


def _register(ws: Workspace, o: SimpleNamespace, dataset: str, names: list[str]) -> None:
    """Write NAMES in processing and register them in DATASET (its manifest stays for a second run)."""
    ws.manifest(dataset, [ws.add_file(n, 100) for n in names])
    _register_again(o, ws, dataset)


def _register_again(o: SimpleNamespace, ws: Workspace, dataset: str) -> None:
    ds, rows = manifest.load(ws.metadata / f"{dataset}.tab", dataset)
    o.db.register(ds, registration.prepare(rows, o.cfg, f"{dataset}.tab"), f"{dataset}.tab")


def _numbers(db: Database) -> dict[str, int]:
    return {r["file_name"]: r["file_number"] for r in db.files(columns=("file_name", "file_number"))}


def _shares(o: SimpleNamespace, branches: int) -> dict[str, int]:
    """file name -> the branch whose candidates hold it; a file in two shares fails here."""
    out: dict[str, int] = {}
    for b in range(1, branches + 1):
        for t in candidates(o.db, o.cfg, branches, b).tasks:
            assert t.rel not in out, f"{t.rel} in the shares of branches {out[t.rel]} and {b}"
            out[t.rel] = b
    return out


def test_numbers_follow_registration_order_not_names(workspace: Workspace, opened: SimpleNamespace) -> None:
    _register(workspace, opened, "DSB", ["m/b1.c4gh", "m/b2.c4gh", "m/b3.c4gh"])
    _register(workspace, opened, "DSA", ["a/a1.c4gh", "z/z1.c4gh"])  # names before and after, registered later
    got = _numbers(opened.db)
    assert sorted(got[n] for n in ("m/b1.c4gh", "m/b2.c4gh", "m/b3.c4gh")) == [1, 2, 3]
    assert sorted((got["a/a1.c4gh"], got["z/z1.c4gh"])) == [4, 5]
    _register_again(opened, workspace, "DSB")  # again: nothing renumbered
    assert _numbers(opened.db) == got


def test_array_shares_stay_put_when_files_are_registered_in_between(
    workspace: Workspace, opened: SimpleNamespace
) -> None:
    """Issue 17 by the design card's formula: every registered file in exactly one share, the share of
    file number k being (k - 1) % branches + 1, and a file registered between plans moves no other."""
    _register(workspace, opened, "DS1", [f"d/{i:02d}.c4gh" for i in range(0, 20, 2)])
    before = _shares(opened, 3)
    numbers = _numbers(opened.db)
    assert set(before) == set(numbers)  # union = all
    assert all(before[n] == (k - 1) % 3 + 1 for n, k in numbers.items())
    _register(workspace, opened, "DS2", [f"d/{i:02d}.c4gh" for i in range(1, 20, 4)])  # names in between
    after = _shares(opened, 3)
    assert {n: after[n] for n in before} == before
    assert set(after) == set(_numbers(opened.db))


def test_concurrent_registrations_never_share_a_number(workspace: Workspace, dbh: SimpleNamespace) -> None:
    """Two `legampi register` processes at once: every file numbered, no number twice."""
    ws = workspace
    per = 400
    manifests = []
    for d in ("DSX", "DSY"):
        lines = [f"{d}/f{i:04d}.c4gh\t{i:032x}\t{i + 1}" for i in range(per)]
        path = ws.metadata / f"{d}.tab"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        manifests.append(path)
    procs = [
        subprocess.Popen([LEGAMPI, "-c", str(ws.config), "register", str(m)], stdout=subprocess.PIPE, text=True)
        for m in manifests
    ]
    for p in procs:
        out, _err = p.communicate(timeout=300)
        assert p.returncode == 0, out
    db = dbh.connect(ws.db_url)
    numbers = [r["file_number"] for r in db.files(columns=("file_number",))]
    db.close()
    assert len(numbers) == 2 * per and None not in numbers
    assert len(set(numbers)) == len(numbers), "a number given twice"
    if ws.db_url.startswith("sqlite"):
        assert sorted(numbers) == list(range(1, 2 * per + 1))  # one writer at a time: no gap either
