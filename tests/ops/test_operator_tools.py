"""Operator commands end to end on both backends: verify-archive, report, testdata, track, count, demo."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest


def _ingest(ws, n: int = 4, size: int = 40_000) -> list[dict]:
    entries = [ws.add_file(f"d/f{i}.bam.c4gh", size + i) for i in range(n)]
    ws.legampi("register", str(ws.manifest("DS1", entries)), "--dataset", "DS1")
    ws.legampi("process")
    return entries


def _events(ws, prefix: str) -> list[dict]:
    from legampi.config import load
    from legampi.db import Database

    db = Database.connect(load(ws.config).database)
    try:
        return [e for e in db.events() if e["event"].startswith(prefix)]
    finally:
        db.close()


def test_verify_archive_passes_then_finds_every_kind_of_problem(workspace):
    _ingest(workspace)
    ok = workspace.mpi(3, "verify-archive", "--decrypt")
    assert "4 archived file(s) checked with decryption: 4 ok, 0 mismatch, 0 missing, 0 unexpected" in ok.stdout
    arch = workspace.end_storage / "d"
    with open(arch / "f1.bam.c4gh", "r+b") as fh:  # one flipped bit in the payload
        fh.seek(-100, 2)
        b = fh.read(1)
        fh.seek(-100, 2)
        fh.write(bytes([b[0] ^ 1]))
    (arch / "f2.bam.c4gh").unlink()
    (arch / "stray.bin").write_bytes(b"not ours")
    bad = workspace.mpi(3, "verify-archive", "--decrypt", check=False)
    assert bad.returncode == 1
    assert "2 ok, 1 mismatch, 1 missing, 1 unexpected" in bad.stdout
    assert "f1.bam.c4gh" in bad.stdout and "does not decrypt" in bad.stdout
    assert "MISSING" in bad.stdout and "f2.bam.c4gh" in bad.stdout
    assert "UNEXPECTED" in bad.stdout and "stray.bin" in bad.stdout
    kinds = sorted(e["event"] for e in _events(workspace, "audit-"))
    assert kinds.count("audit-ok") == 4 + 2 and "audit-mismatch" in kinds and "audit-unexpected" in kinds


def test_verify_archive_without_decrypt_checks_bytes_and_sidecar(workspace):
    _ingest(workspace, n=2)
    side = workspace.end_storage / "d" / "f0.bam.c4gh.sha256"
    side.write_text("0" * 64 + "  f0.bam.c4gh\n")
    p = workspace.legampi("verify-archive", check=False)
    assert p.returncode == 1
    assert "sidecar says " + "0" * 64 in p.stdout


def test_report_is_written_from_the_database(workspace, tmp_path):
    _ingest(workspace, n=3)
    bad = workspace.add_file("d/bad.bam.c4gh", 1000)
    bad["md5"] = "f" * 32
    workspace.legampi("register", str(workspace.manifest("DS2", [bad])), "--dataset", "DS2")
    workspace.legampi("process", check=False)
    workspace.legampi("verify-archive")
    out = tmp_path / "r.html"
    workspace.legampi("report", "-o", str(out))
    html = out.read_text()
    assert "DS1" in html and "DS2" in html
    assert "d/bad.bam.c4gh" in html and "md5" in html  # the failed file with its reason
    assert "<svg" in html and "<script" not in html


def test_testdata_formats_flow_through_the_pipeline(workspace):
    env = {"LEGAMPI_LEGACY_PASSWORD": "legacy-secret-for-tests"}
    for fmt, ds in (("c4gh", "DSC"), ("cip", "DSA"), ("plain", "DSP")):
        workspace.legampi(
            "testdata", "--dataset", ds, "--files", "3", "--sizes", "lognormal:20KB,1.0", "--format", fmt, env=env
        )
        workspace.legampi("register", str(workspace.metadata / f"{ds}.json"), env=env)
    for _ in range(3):
        workspace.legampi("monitor", env=env)
    workspace.legampi("process", env=env)
    files = json.loads(workspace.legampi("status", "--json").stdout)["files"]
    assert len(files) == 9 and {f["status"] for f in files} == {"available"}
    assert all(f["file_name"].endswith((".c4gh", ".cip", ".bam")) for f in files)
    counts = workspace.legampi("count").stdout
    assert "receiving    0" in counts


def test_track_finds_what_was_lost(workspace):
    entries = [workspace.add_file(f"t/f{i}.bam.c4gh", 5000, where="receiving") for i in range(3)]
    workspace.legampi("register", str(workspace.manifest("DST", entries)), "--dataset", "DST")
    workspace.legampi("track", "start")
    (workspace.receiving / "t/f2.bam.c4gh").unlink()  # lost in transfer
    for _ in range(3):
        workspace.legampi("monitor")
    workspace.legampi("process")
    workspace.legampi("track", "end")
    p = workspace.legampi("track", "compare", check=False)
    assert p.returncode == 1
    assert "2 of 3 file(s) arrived" in p.stdout and "LOST t/f2.bam.c4gh" in p.stdout


def test_demo_runs_the_whole_pipeline_in_its_folder(tmp_path: Path):
    folder = tmp_path / "demo"
    p = subprocess.run(
        [sys.executable, "-m", "legampi", "demo", str(folder), "--files", "8"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert "8 file(s), 8 available, 0 failed" in p.stdout
    # crypt4gh's key notice is gone; legampi's own warnings (e.g. a slow start on a loaded machine) may stay
    assert "The private key is not encrypted" not in p.stderr, p.stderr
    nxt = p.stdout[p.stdout.index("\nNext:") :].replace("Next:", "", 1).split("\n")
    commands = [shlex.split(line) for line in nxt if line.strip()]
    assert [c[3] for c in commands] == ["status", "report", "verify-archive"]
    for cmd in commands:  # every suggested next step works as printed
        assert cmd[0] == "legampi"
        r = subprocess.run([sys.executable, "-m", "legampi", *cmd[1:]], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (cmd, r.stdout, r.stderr)
    assert "8 ok, 0 mismatch" in r.stdout and (folder / "report.html").is_file()
    archived = list((folder / "archive").rglob("*.c4gh"))
    assert len(archived) == 8
    assert not list((folder / "processing").rglob("*.c4gh")), "sources removed once recorded"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["demo"], "nothing outside its folder"
    again = subprocess.run(
        [sys.executable, "-m", "legampi", "demo", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 2 and "not empty" in again.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_log_event_and_update(workspace):
    _ingest(workspace, n=1)
    workspace.legampi("log-event", "DS1", "download_start")
    workspace.legampi("update", "d/f0.bam.c4gh", "failed", "--reason", "operator test")
    st = json.loads(workspace.legampi("status", "--json").stdout)
    assert st["files"][0]["status"] == "failed" and st["files"][0]["error"] == "operator test"
    assert st["datasets"][0]["date_download_start"] is not None
    assert workspace.legampi("update", "nope", "failed", check=False).returncode == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_json_logs_name_file_and_dataset(workspace):
    good = workspace.add_file("j/ok.bam.c4gh", 3000)
    bad = dict(workspace.add_file("j/bad.bam.c4gh", 3000), md5="1" * 32)
    workspace.legampi("register", str(workspace.manifest("DSJ", [good, bad])), "--dataset", "DSJ")
    p = workspace.legampi("--log-format", "json", "process", "--progress-interval", "0", check=False)
    assert p.returncode == 1
    records = [json.loads(line) for line in p.stderr.splitlines() if line.strip()]
    failed = [r for r in records if r["level"] == "ERROR" and r.get("file_id") == "j/bad.bam.c4gh"]
    assert failed and failed[0]["dataset_id"] == "DSJ" and "md5" in failed[0]["message"]
    assert any(r["level"] == "INFO" and r.get("file_id") == "j/ok.bam.c4gh" for r in records)
    assert any(r["message"].startswith("progress: ") for r in records), "batch jobs get progress lines"
    assert all({"time", "level", "rank", "message"} <= r.keys() for r in records)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_testdata_gpg_files_are_archived(workspace, tmp_path):
    """`testdata --format gpg` encrypts for the node's OpenPGP key; gpg decrypts them in the pipeline."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    subprocess.run(
        [
            "gpg",
            "--homedir",
            str(home),
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-gen-key",
            "legampi-test <node@example.org>",
            "default",
            "default",
            "never",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    text = workspace.config.read_text().replace("[crypto]\n", f"[crypto]\ngnupg_home = {home}\n")
    workspace.config.write_text(text)
    env = {"LEGAMPI_GPG_PASSPHRASE": ""}
    workspace.legampi("testdata", "--dataset", "DSG", "--files", "2", "--size", "70KB", "--format", "gpg", env=env)
    workspace.legampi("register", str(workspace.metadata / "DSG.json"), env=env)
    for _ in range(3):
        workspace.legampi("monitor", env=env)
    p = workspace.legampi("process", env=env, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    files = json.loads(workspace.legampi("status", "--json").stdout)["files"]
    assert [f["status"] for f in files] == ["available", "available"]
    assert all(f["file_name"].endswith(".gpg") and f["archive_path"].endswith(".bam.c4gh") for f in files)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_update_refuses_a_file_a_running_job_holds(workspace):
    """An operator's status change must not pull a file from under a live job (two jobs could then take
    it, or the job's result be lost): refused, nothing changed, unless --force; once the job ended, allowed."""
    from legampi.config import load
    from legampi.db import Database

    _ingest(workspace, n=1)
    db = Database.connect(load(workspace.config).database)
    try:
        db.job_start("holder-job", "rekey", "this-host-is-not-ours", 1)  # pid: this test's, heartbeat fresh
        assert db.claim_archived(["d/f0.bam.c4gh"], "holder-job") == ["d/f0.bam.c4gh"]
        p = workspace.legampi("update", "d/f0.bam.c4gh", "failed", "--reason", "x", check=False)
        assert p.returncode == 1 and "claimed by job holder-job (rekey on this-host-is-not-ours" in p.stderr
        assert "nothing changed" in p.stderr and "--force" in p.stderr
        row = db.file_row("d/f0.bam.c4gh")
        assert row.status == "available" and row.claimed_by == "holder-job"
        forced = workspace.legampi("update", "d/f0.bam.c4gh", "received", "--reason", "re-run", "--force")
        assert "available -> received" in forced.stdout
        db.claim(["d/f0.bam.c4gh"], "holder-job")  # held again, then the job ends: no longer in the way
        db.job_end("holder-job", 0, "done", [])
        workspace.legampi("update", "d/f0.bam.c4gh", "failed", "--reason", "after the job")
        assert db.file_row("d/f0.bam.c4gh").status == "failed"
    finally:
        db.close()
