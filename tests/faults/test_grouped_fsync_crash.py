"""Issue 15: a worker SIGKILLed inside a group's sync (grouping.GroupedWork, groupsync.Group).

The worker sends a group's results only after the group's folder fsync, so a worker killed right before
that fsync has sent nothing for the group: rank 0 recorded nothing that is not on disk and removed no
source of it. The group's files that reached their final names carry their provenance; the rerun adopts
them and archives the others, each file exactly once.
"""

from __future__ import annotations

import re
import textwrap

from legampi import archive, checksum
from tests.faults.conftest import (
    add_files,
    archived_files,
    assert_safe,
    events,
    finish,
    rows_by_name,
    set_options,
    sha256_file,
    start_mpi,
    temp_files,
)

HOOK = textwrap.dedent(
    """
    # Test hook (tests/faults/test_grouped_fsync_crash.py): SIGKILL a worker rank at the Nth folder fsync of
    # a group sync, i.e. after the group's links, before its results exist.
    import os

    if os.environ.get("LEGAMPI_TEST_KILL_AT_GROUP_FSYNC") and os.environ.get("PMI_RANK", "0") != "0":
        import signal
        import threading

        from legampi import archive

        _real, _seen = archive.fsync_dir, [0]

        def _fsync_dir(path):
            if threading.current_thread().name == "legampi-group-sync":
                _seen[0] += 1
                if _seen[0] >= int(os.environ["LEGAMPI_TEST_KILL_AT_GROUP_FSYNC"]):
                    os.kill(os.getpid(), signal.SIGKILL)
            return _real(path)

        archive.fsync_dir = _fsync_dir
    """
)


def test_worker_killed_in_a_group_folder_fsync_loses_nothing_and_rerun_finishes_once(
    workspace, tmp_path, monkeypatch
) -> None:
    ws = workspace
    files = add_files(ws, "g", 40, 1000)
    set_options(ws, func_conf={"group_files": 4})
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    monkeypatch.setenv("PYTHONPATH", str(hook))
    monkeypatch.setenv("LEGAMPI_TEST_KILL_AT_GROUP_FSYNC", "3")
    rc, _out, err = finish(start_mpi(ws, 3, "process", tag="killed"), timeout=120)
    assert rc != 0, f"the job ended 0 though a worker was killed:\n{err}"
    rows = rows_by_name(ws)
    available = {n for n, r in rows.items() if r["status"] == "available"}
    for e in files:  # recorded => on disk with its sidecar (the checksum it recorded); else the source is kept
        name, final = e["name"], archive.final_path(ws.end_storage, e["name"], (".c4gh",))
        if name in available:
            ok, _expected, found = checksum.check_sidecar(checksum.sidecar_path(final, "sha256"))
            assert ok and found == rows[name]["archive_checksum"], f"{name}: recorded, not on disk as recorded"
        else:
            assert (ws.processing / name).is_file(), f"{name}: LOST: not recorded and its source is gone"
    assert len(available) < len(files), "the kill came after every file was recorded"
    linked = {p.name: (p.stat().st_ino, sha256_file(p)) for p in archived_files(ws) if p.name not in available}
    assert linked, "no file of the killed group had reached its final name"
    for name in linked:  # the killed group's files that reached their names: with provenance, source kept
        assert (ws.end_storage / (name + ".sha256")).is_file(), f"{name}: archived without its sidecar"
        assert (ws.processing / name).is_file(), f"{name}: source removed though its row was not recorded"
    temps = temp_files(ws)
    monkeypatch.delenv("LEGAMPI_TEST_KILL_AT_GROUP_FSYNC")
    rerun = ws.mpi(3, "process")
    assert rerun.returncode == 0, rerun.stderr
    adopted = set(re.findall(r"recorded: (\S+) -> ", rerun.stderr))
    assert adopted == set(linked), f"rerun adopted {adopted}, linked before the kill {set(linked)}"
    assert all(f"temp removed: {t.name}" in rerun.stderr for t in temps), rerun.stderr  # the dead worker's
    after = {p.name: (p.stat().st_ino, sha256_file(p)) for p in archived_files(ws)}
    assert all(after[n] == ident for n, ident in linked.items()), "an adopted copy was rewritten"
    per_file = {
        e["name"]: sum(1 for ev in events(ws, "available") if ev["file_id"] == rows[e["name"]]["file_id"])
        for e in files
    }
    assert all(v == 1 for v in per_file.values()), per_file
    assert_safe(ws, files, complete=True)  # every file available once, every source removed, nothing extra
