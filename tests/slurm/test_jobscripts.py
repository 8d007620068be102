"""The job scripts in jobscripts/ run for real on the one-node test Slurm cluster.

Each test builds a workspace (tests/conftest.py), submits the script with ``sbatch`` and asserts on
the archive folder and the tracking database: what an operator relies on when submitting them.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from legampi import archive
from legampi.workspace import share_of

if TYPE_CHECKING:  # conftest modules are not importable under every pytest import mode
    from conftest import SlurmCluster, Workspace

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
JOBSCRIPTS = REPO / "jobscripts"
BIN = Path(sys.executable).parent
LEGAMPI = str(BIN / "legampi")
VENV = str(BIN.parent)
CRASH_HOOK = REPO / "tests" / "mpi" / "crashhook"  # LEGAMPI_TEST_CRASH_RANK=R: rank R raises
JOB_TIMEOUT = 240.0
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
postgresql_only = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


# ---------------------------------------------------------------------- helpers
def _env(cluster: SlurmCluster, **extra: str) -> dict[str, str]:
    """The submit environment: sbatch exports it to the job (--export=ALL), as at a site."""
    env = dict(cluster.env, LEGAMPI=LEGAMPI)
    env.pop("LEGAMPI_CONFIG", None)
    env.update(extra)
    return env


def _sbatch(
    cluster: SlurmCluster,
    script: str,
    args: list[str],
    cwd: Path,
    env: dict[str, str],
    options: tuple[str, ...] = (),
    wait: bool = True,
) -> tuple[int, str, str]:
    """Submit a job script from cwd; returns (sbatch exit code, job id, sbatch stderr)."""
    cmd = [
        "sbatch",
        "--parsable",
        *(["--wait"] if wait else []),
        f"--chdir={cwd}",
        *options,
        str(JOBSCRIPTS / script),
        *args,
    ]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=JOB_TIMEOUT, check=False)
    job_id = proc.stdout.strip().split("\n")[0].split(";")[0]
    assert job_id.isdigit(), f"sbatch printed no job id: stdout={proc.stdout!r} stderr={proc.stderr!r}"
    return proc.returncode, job_id, proc.stderr


def _output(cwd: Path, pattern: str) -> str:
    """All job output files matching pattern in cwd, concatenated (for assertion messages too)."""
    return "".join(f"==> {p.name}\n{p.read_text()}" for p in sorted(cwd.glob(pattern)))


def _status(ws: Workspace) -> dict[str, Any]:
    return json.loads(ws.legampi("status", "--json").stdout)


def _by_status(ws: Workspace) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in _status(ws)["files"]:
        out.setdefault(f["status"], set()).add(f["file_name"])
    return out


def _events(ws: Workspace, event: str) -> list[dict[str, Any]]:
    from legampi.config import load
    from legampi.db import Database

    db = Database.connect(load(ws.config).database)
    try:
        return db.events(event=event)
    finally:
        db.close()


def _slurm_jobs(events: list[dict[str, Any]]) -> list[str]:
    """The Slurm job of each event: legampi's job id is slurm-<job>[_<task>]-<start time>."""
    out = []
    for ev in events:
        m = re.fullmatch(r"slurm-(\d+(?:_\d+)?)-\d+", ev["job_id"] or "")
        assert m, f"event {ev} has no Slurm job id"
        out.append(m.group(1))
    return out


def _plain_of(ws: Workspace, archived: Path) -> bytes:
    from crypt4gh.keys import get_private_key
    from crypt4gh.lib import decrypt

    sk = get_private_key(str(ws.archive_sk), lambda: None)
    out = io.BytesIO()
    with open(archived, "rb") as fh:
        decrypt([(0, sk, None)], fh, out)
    return out.getvalue()


def _dataset(ws: Workspace, n: int, size: int, ds: str = "DS1", where: str = "processing") -> list[dict]:
    entries = [ws.add_file(f"{ds}/f{i:03d}.bam.c4gh", size + i, where=where) for i in range(n)]
    ws.legampi("register", str(ws.manifest(ds, entries)), "--dataset", ds)
    return entries


def _temp_files(ws: Workspace) -> list[Path]:
    return [
        p
        for root in (ws.end_storage, ws.processing)
        for p in root.rglob("*")
        if p.is_file() and archive.is_temp_name(p.name)
    ]


def _set_option(ws: Workspace, section: str, line: str) -> None:
    """Add an option line right after a section header of the workspace's config."""
    text = ws.config.read_text()
    assert f"[{section}]\n" in text
    ws.config.write_text(text.replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1))


# ---------------------------------------------------------------------- ingest.sbatch
def test_ingest_archives_every_file(slurm_cluster: SlurmCluster, workspace: Workspace, tmp_path: Path) -> None:
    entries = _dataset(workspace, 12, 150_000)
    rc, job_id, _ = _sbatch(
        slurm_cluster, "ingest.sbatch", [str(workspace.config)], tmp_path, _env(slurm_cluster), options=("-n", "3")
    )
    out = _output(tmp_path, f"legampi-ingest-{job_id}.out")
    assert rc == 0, out
    assert slurm_cluster.job_field(job_id, "JobState") == "COMPLETED"
    assert "12 file(s), 12 available, 0 failed" in out
    # rank 0 coordinates, ranks 1 and 2 stream: one MPI world of 3 under srun, not 3 singletons
    assert set(re.findall(r" rank (\d+) on ", out)) == {"1", "2"}, out
    assert "legampi process exited 0" in out
    assert _by_status(workspace) == {"available": {e["name"] for e in entries}}
    for e in entries:
        assert _plain_of(workspace, workspace.end_storage / e["name"]) == e["plain"]
        assert not (workspace.processing / e["name"]).exists()
    assert set(_slurm_jobs(_events(workspace, "available"))) == {job_id}
    assert _temp_files(workspace) == []


@sqlite_only
def test_ingest_config_from_environment_and_extra_options(
    slurm_cluster: SlurmCluster, workspace: Workspace, tmp_path: Path
) -> None:
    """LEGAMPI_CONFIG instead of an argument; the remaining arguments go to `legampi process`."""
    entries = _dataset(workspace, 3, 1000, ds="DSA") + _dataset(workspace, 2, 1000, ds="DSB")
    env = _env(slurm_cluster, LEGAMPI_CONFIG=str(workspace.config), LEGAMPI_VENV=VENV)
    del env["LEGAMPI"]  # found on PATH after activating the virtualenv
    rc, job_id, _ = _sbatch(slurm_cluster, "ingest.sbatch", ["--dataset", "DSB"], tmp_path, env, options=("-n", "2"))
    out = _output(tmp_path, f"legampi-ingest-{job_id}.out")
    assert rc == 0, out
    assert _by_status(workspace) == {
        "available": {e["name"] for e in entries[3:]},
        "pending": {e["name"] for e in entries[:3]},
    }


def test_ingest_without_config_fails_clearly(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    rc, job_id, _ = _sbatch(slurm_cluster, "ingest.sbatch", [], tmp_path, _env(slurm_cluster), options=("-n", "1"))
    out = _output(tmp_path, f"legampi-ingest-{job_id}.out")
    assert rc == 2, out
    assert slurm_cluster.job_field(job_id, "JobState") == "FAILED"
    assert "no configuration" in out and "LEGAMPI_CONFIG" in out

    missing = tmp_path / "nowhere.ini"
    rc, job_id, _ = _sbatch(
        slurm_cluster, "ingest.sbatch", [str(missing)], tmp_path, _env(slurm_cluster), options=("-n", "1")
    )
    out = _output(tmp_path, f"legampi-ingest-{job_id}.out")
    assert rc == 2, out
    assert f"configuration file {missing} does not exist" in out


@sqlite_only
def test_ingest_fails_when_ranks_cannot_start(
    slurm_cluster: SlurmCluster, workspace: Workspace, tmp_path: Path
) -> None:
    """A garbage archive public key: the worker ranks cannot build the pipeline, the job must fail."""
    entries = _dataset(workspace, 3, 1000)
    bad = workspace.root / "keys" / "garbage.pub"
    bad.write_text("this is not a crypt4gh public key\n")
    text = workspace.config.read_text()
    workspace.config.write_text(
        text.replace(f"archive_public_key = {workspace.archive_pk}", f"archive_public_key = {bad}")
    )
    rc, job_id, _ = _sbatch(
        slurm_cluster, "ingest.sbatch", [str(workspace.config)], tmp_path, _env(slurm_cluster), options=("-n", "3")
    )
    out = _output(tmp_path, f"legampi-ingest-{job_id}.out")
    assert rc != 0, out
    assert slurm_cluster.job_field(job_id, "JobState") == "FAILED"
    assert str(bad) in out, "the error names the bad key file"
    assert _by_status(workspace) == {"pending": {e["name"] for e in entries}}, "nothing claimed or archived"
    assert list(workspace.end_storage.rglob("*")) == []


@sqlite_only
def test_ingest_fails_when_a_rank_crashes(slurm_cluster: SlurmCluster, workspace: Workspace, tmp_path: Path) -> None:
    """A worker rank raises on its first file: the whole step ends (no hang), the job is FAILED."""
    entries = _dataset(workspace, 4, 1000)
    env = _env(
        slurm_cluster,
        PYTHONPATH=f"{CRASH_HOOK}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        LEGAMPI_TEST_CRASH_RANK="2",
    )
    rc, job_id, _ = _sbatch(slurm_cluster, "ingest.sbatch", [str(workspace.config)], tmp_path, env, options=("-n", "3"))
    out = _output(tmp_path, f"legampi-ingest-{job_id}.out")
    assert rc != 0, out
    assert slurm_cluster.job_field(job_id, "JobState") == "FAILED"
    assert "injected crash on rank 2" in out, out
    assert re.search(r"legampi process exited [1-9]", out), out

    rc, rerun_id, _ = _sbatch(
        slurm_cluster, "ingest.sbatch", [str(workspace.config)], tmp_path, _env(slurm_cluster), options=("-n", "3")
    )
    out = _output(tmp_path, f"legampi-ingest-{rerun_id}.out")
    assert rc == 0, out
    assert _by_status(workspace) == {"available": {e["name"] for e in entries}}
    assert _temp_files(workspace) == []


@sqlite_only
def test_ingest_mpi_plugin_is_a_switch(slurm_cluster: SlurmCluster, workspace: Workspace, tmp_path: Path) -> None:
    """LEGAMPI_SRUN_MPI reaches srun: a plugin the PyPI mpich does not speak (none) gives N singletons,
    which legampi refuses before touching anything; the log is named %x-%j after a custom job name."""
    entries = _dataset(workspace, 2, 1000)
    env = _env(slurm_cluster, LEGAMPI_SRUN_MPI="none")
    rc, job_id, _ = _sbatch(
        slurm_cluster,
        "ingest.sbatch",
        [str(workspace.config)],
        tmp_path,
        env,
        options=("-n", "2", "--job-name=ingest-switch"),
    )
    out = _output(tmp_path, f"ingest-switch-{job_id}.out")
    assert rc != 0, out
    assert "srun --mpi=none," in out and "MPI sees a communicator of size 1" in out, out
    assert _by_status(workspace) == {"pending": {e["name"] for e in entries}}


# ---------------------------------------------------------------------- walltime warning
@sqlite_only
def test_usr1_stops_cleanly_and_rerun_finishes(
    slurm_cluster: SlurmCluster, workspace: Workspace, tmp_path: Path
) -> None:
    entries = _dataset(workspace, 150, 1_000_000)
    names = {e["name"] for e in entries}
    rc, job_id, _ = _sbatch(
        slurm_cluster,
        "ingest.sbatch",
        [str(workspace.config)],
        tmp_path,
        _env(slurm_cluster),
        options=("-n", "3"),
        wait=False,
    )
    assert rc == 0
    out_file = tmp_path / f"legampi-ingest-{job_id}.out"

    # Signal as soon as the first file is archived: the job is then surely past start-up (handlers set).
    deadline = time.monotonic() + JOB_TIMEOUT
    while not any(p.suffix == ".c4gh" for p in workspace.end_storage.rglob("*.c4gh")):
        state = slurm_cluster.job_field(job_id, "JobState")
        text = out_file.read_text() if out_file.exists() else ""
        assert state in ("PENDING", "RUNNING", "CONFIGURING"), f"job {state} before archiving anything\n{text}"
        assert time.monotonic() < deadline, f"nothing archived after {JOB_TIMEOUT}s\n{text}"
        time.sleep(0.05)
    slurm_cluster.run(["scancel", "--signal=USR1", "--batch", job_id])
    state = slurm_cluster.wait_job_final(job_id, timeout=JOB_TIMEOUT)
    out = out_file.read_text()
    assert state == "COMPLETED", out
    assert slurm_cluster.job_field(job_id, "ExitCode") == "0:0", out
    assert "got USR1" in out and "stopped early by signal" in out, out

    first = _by_status(workspace)
    # claimed and not started: released (`received`); never claimed (claims come in batches): `pending`
    assert set(first) <= {"available", "received", "pending"}, {k: len(v) for k, v in first.items()}
    assert first["available"] and first.get("received")
    assert re.search(rf"{len(first['received'])} claimed file\(s\) not started were released", out), out
    assert _temp_files(workspace) == []
    for name in first["available"]:
        assert (workspace.end_storage / name).is_file() and not (workspace.processing / name).exists()
    for name in first["received"] | first.get("pending", set()):
        assert (workspace.processing / name).is_file() and not (workspace.end_storage / name).exists()

    rc, rerun_id, _ = _sbatch(
        slurm_cluster, "ingest.sbatch", [str(workspace.config)], tmp_path, _env(slurm_cluster), options=("-n", "3")
    )
    out = _output(tmp_path, f"legampi-ingest-{rerun_id}.out")
    assert rc == 0, out
    assert _by_status(workspace) == {"available": names}
    done = _events(workspace, "available")
    assert len(done) == len(names) == len({ev["file_id"] for ev in done}), "each file archived once"
    assert set(_slurm_jobs(done)) == {job_id, rerun_id}
    assert _temp_files(workspace) == []


# ---------------------------------------------------------------------- ingest-array.sbatch
@postgresql_only
def test_array_tasks_take_their_shares(slurm_cluster: SlurmCluster, workspace: Workspace, tmp_path: Path) -> None:
    # each task takes the files whose file_number = branch + branches*n (workspace.share_of), whatever the listing
    _set_option(workspace, "workspaces", "keep_processed = true")
    entries = _dataset(workspace, 11, 20_000)
    names = sorted(e["name"] for e in entries)
    rc, array_id, _ = _sbatch(
        slurm_cluster,
        "ingest-array.sbatch",
        [str(workspace.config)],
        tmp_path,
        _env(slurm_cluster, LEGAMPI_VENV=VENV),
        options=("--array=1-2", "-n", "2"),
    )
    out = _output(tmp_path, f"legampi-ingest-array-{array_id}_*.out")
    assert rc == 0, out
    assert "share 1 of 2" in out and "share 2 of 2" in out, out
    assert _by_status(workspace) == {"available": set(names)}
    done = _events(workspace, "available")
    assert len(done) == len(names) and len({ev["file_id"] for ev in done}) == len(names), "each file once"
    file_name = {f["file_id"]: f["file_name"] for f in _status(workspace)["files"]}
    took: dict[str, set[str]] = {}
    for ev, job in zip(done, _slurm_jobs(done), strict=True):
        took.setdefault(job, set()).add(file_name[ev["file_id"]])
    number = {f["file_name"]: f["file_number"] for f in _status(workspace)["files"]}
    shares = {b: {n for n in names if share_of(number[n], 2) == b} for b in (1, 2)}
    assert took == {f"{array_id}_{b}": shares[b] for b in (1, 2) if shares[b]}


@sqlite_only
def test_array_shares_stay_put_when_sources_are_removed(
    slurm_cluster: SlurmCluster, workspace: Workspace, tmp_path: Path
) -> None:
    entries = _dataset(workspace, 6, 20_000)
    rc, array_id, _ = _sbatch(
        slurm_cluster,
        "ingest-array.sbatch",
        [str(workspace.config)],
        tmp_path,
        _env(slurm_cluster),
        options=("--array=1-2%1", "-n", "2"),
    )
    out = _output(tmp_path, f"legampi-ingest-array-{array_id}_*.out")
    assert rc == 0, out
    assert _by_status(workspace) == {"available": {e["name"] for e in entries}}


@sqlite_only
def test_array_refuses_irregular_ids(slurm_cluster: SlurmCluster, workspace: Workspace, tmp_path: Path) -> None:
    entries = _dataset(workspace, 2, 1000)
    rc, array_id, _ = _sbatch(
        slurm_cluster,
        "ingest-array.sbatch",
        [str(workspace.config)],
        tmp_path,
        _env(slurm_cluster),
        options=("--array=1,5", "-n", "1"),
    )
    out = _output(tmp_path, f"legampi-ingest-array-{array_id}_*.out")
    assert rc == 2, out
    assert out.count("not a regular range") == 2, out
    assert _by_status(workspace) == {"pending": {e["name"] for e in entries}}


# ---------------------------------------------------------------------- monitor.sbatch
@sqlite_only
def test_monitor_moves_finished_transfers(slurm_cluster: SlurmCluster, workspace: Workspace, tmp_path: Path) -> None:
    entries = _dataset(workspace, 3, 5000, where="receiving")
    names = {e["name"] for e in entries}
    env = _env(slurm_cluster, LEGAMPI_MONITOR_ONCE="1")
    name = f"legampi-monitor-{uuid.uuid4().hex[:8]}"
    # pass_limit = 2: pass 1 starts tracking, pass 2 counts one unchanged pass, pass 3 moves.
    for n in (1, 2, 3):
        rc, job_id, _ = _sbatch(
            slurm_cluster, "monitor.sbatch", [str(workspace.config)], tmp_path, env, options=(f"--job-name={name}",)
        )
        out = _output(tmp_path, f"{name}-{job_id}.out")
        assert rc == 0, out
        assert "one pass, no next run" in out
        assert slurm_cluster.run(["squeue", "-h", f"--name={name}"]).stdout == "", "nothing resubmitted"
        if n < 3:
            assert _by_status(workspace) == {"pending": names}, out
    assert "3 moved to processing" in out, out
    assert _by_status(workspace) == {"received": names}
    for e in entries:
        assert (workspace.processing / e["name"]).is_file() and not (workspace.receiving / e["name"]).exists()


@sqlite_only
def test_monitor_queues_its_next_run(slurm_cluster: SlurmCluster, workspace: Workspace, tmp_path: Path) -> None:
    name = f"legampi-monitor-{uuid.uuid4().hex[:8]}"
    env = _env(slurm_cluster, LEGAMPI_MONITOR_INTERVAL="3600")
    rc, job_id, _ = _sbatch(
        slurm_cluster, "monitor.sbatch", [str(workspace.config)], tmp_path, env, options=(f"--job-name={name}",)
    )
    out = _output(tmp_path, f"{name}-{job_id}.out")
    queued = slurm_cluster.run(["squeue", "-h", f"--name={name}", "-o", "%i %T %r"]).stdout.split()
    try:
        assert rc == 0, out
        assert len(queued) == 3, f"expected one queued next run, squeue says {queued}\n{out}"
        next_id, state, reason = queued
        # waiting for its begin time, or for the scheduler to notice that this run (the singleton) ended
        assert next_id != job_id and state == "PENDING" and reason in ("BeginTime", "Dependency"), queued
        assert f"next pass queued as job {next_id}" in out
        assert "monitor pass: 0 moved" in out
        fields = {k: slurm_cluster.job_field(next_id, k) for k in ("JobName", "Dependency", "Command", "WorkDir")}
        # Slurm shows the singleton until this run has ended, then clears the satisfied dependency
        assert fields["Dependency"].startswith("singleton") or fields["Dependency"] == "(null)", fields
        assert "--dependency=singleton" in out, out
        assert fields == {
            "JobName": name,
            "Dependency": fields["Dependency"],
            "Command": f"{JOBSCRIPTS / 'monitor.sbatch'}",
            "WorkDir": str(tmp_path),
        }, fields
        begin = slurm_cluster.job_field(next_id, "EligibleTime")
        begins_in = time.mktime(time.strptime(begin, "%Y-%m-%dT%H:%M:%S")) - time.time()
        assert 3000 < begins_in <= 3600, f"EligibleTime {begin} is not about an hour from now"
        # Command= shows the arguments too, as submitted: the same config
        cmd = subprocess.run(
            ["scontrol", "show", "job", next_id], env=slurm_cluster.env, capture_output=True, text=True, check=True
        ).stdout
        assert f"Command={JOBSCRIPTS / 'monitor.sbatch'} {workspace.config}\n" in cmd, cmd
    finally:
        if queued:
            slurm_cluster.run(["scancel", queued[0]])
    assert slurm_cluster.wait_job_final(queued[0]) == "CANCELLED"


@sqlite_only
def test_monitor_stop_file_ends_the_chain(slurm_cluster: SlurmCluster, workspace: Workspace, tmp_path: Path) -> None:
    entries = _dataset(workspace, 1, 5000, where="receiving")
    stop = tmp_path / "stop-monitor"
    stop.touch()
    name = f"legampi-monitor-{uuid.uuid4().hex[:8]}"
    rc, job_id, _ = _sbatch(
        slurm_cluster,
        "monitor.sbatch",
        [str(workspace.config)],
        tmp_path,
        _env(slurm_cluster, LEGAMPI_MONITOR_STOP=str(stop)),
        options=(f"--job-name={name}",),
    )
    out = _output(tmp_path, f"{name}-{job_id}.out")
    assert rc == 0, out
    assert f"stop file {stop} exists" in out
    assert slurm_cluster.run(["squeue", "-h", f"--name={name}"]).stdout == ""
    assert _status(workspace)["files"][0]["status"] == "pending"
    assert (workspace.receiving / entries[0]["name"]).is_file()


# ---------------------------------------------------------------------- run-local.sh (no Slurm)
@sqlite_only
@pytest.mark.mpi
def test_run_local_monitors_then_ingests(workspace: Workspace, tmp_path: Path) -> None:
    text = workspace.config.read_text().replace("pass_limit = 2", "pass_limit = 1")
    workspace.config.write_text(text)
    entries = _dataset(workspace, 4, 3000, where="receiving")
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", NP="3", PASSES="2", PASS_INTERVAL="0")
    env.pop("LEGAMPI_CONFIG", None)
    proc = subprocess.run(
        [str(JOBSCRIPTS / "run-local.sh"), str(workspace.config)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 file(s), 4 available, 0 failed" in proc.stdout, proc.stdout
    assert _by_status(workspace) == {"available": {e["name"] for e in entries}}
