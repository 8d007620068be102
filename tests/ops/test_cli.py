"""The `legampi` command as a Unix tool (issue 17): options on either side of the command, a closed pipe,
read-only commands that need only what they read, --version, and a testdata --help that explains itself.

These run the real executable (a fresh interpreter per call, as an operator's shell does) on SQLite: the
behaviour is the CLI's, the same on both backends.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import pytest

from legampi import __version__
from legampi.cli import build_parser
from legampi.config import SECTIONS
from tests.conftest import LEGAMPI, Workspace, make_workspace

ENV = {k: v for k, v in os.environ.items() if k != "LEGAMPI_CONFIG"}


def legampi(*args: str, stdout: int | None = subprocess.PIPE, env: dict[str, str] = ENV) -> subprocess.CompletedProcess:
    return subprocess.run([LEGAMPI, *args], stdout=stdout, stderr=subprocess.PIPE, text=True, env=env, timeout=120)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    w = make_workspace(tmp_path, f"sqlite:///{tmp_path / 'tracking.db'}")
    w.legampi("init-db")
    return w


def register_many(ws: Workspace, n: int, dataset: str = "DS1") -> None:
    """N registered files (names only: status lists them whether or not they exist)."""
    lines = [f"sample/long-enough-name-to-fill-a-pipe-{i:05d}.bam.c4gh\t{i:032x}" for i in range(n)]
    manifest = ws.metadata / f"{dataset}.tab"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ws.legampi("register", str(manifest), "--dataset", dataset)


# ------------------------------------------------------------------ global options on either side
def test_global_options_are_accepted_after_the_command(ws: Workspace, tmp_path: Path) -> None:
    register_many(ws, 3)
    before = legampi("-c", str(ws.config), "status")
    after = legampi("status", "-c", str(ws.config))
    assert before.returncode == after.returncode == 0, after.stderr
    assert after.stdout == before.stdout and "DS1" in after.stdout
    log = tmp_path / "status.log"
    p = legampi("status", "--brief", "--config", str(ws.config), "--log-level", "debug", "--log-file", str(log))
    assert p.returncode == 0, p.stderr
    assert log.exists()  # --log-file after the command was applied
    # given on both sides, the one after the command wins (like a later option on any command line)
    p = legampi("-c", str(tmp_path / "absent.ini"), "status", "--brief", "-c", str(ws.config))
    assert p.returncode == 0, p.stderr


def test_global_options_after_the_command_keep_the_defaults_when_absent(ws: Workspace) -> None:
    args = build_parser().parse_args(["-c", "x.ini", "--log-format", "json", "status"])
    assert (args.config, args.log_format, args.log_level, args.log_file) == ("x.ini", "json", "info", None)
    args = build_parser().parse_args(["status", "--log-format", "json", "-c", "y.ini"])
    assert (args.config, args.log_format, args.log_level, args.log_file) == ("y.ini", "json", "info", None)


def test_a_command_usage_line_does_not_repeat_the_global_options() -> None:
    p = legampi("checksum", "--help")
    usage = p.stdout.split("\n\n")[0]
    assert usage.startswith("usage: legampi checksum [-h] [--algo {sha256,md5}]") and "--config" not in usage
    assert "global options (before or after the command):" in p.stdout and "--log-file LOG_FILE" in p.stdout


# ------------------------------------------------------------------ a reader that leaves
def closed_pipe_run(*args: str, buffered: bool = False) -> subprocess.CompletedProcess:
    """Run legampi with stdout a pipe whose reader is already gone: the first write fails with EPIPE.

    Unbuffered (PYTHONUNBUFFERED=1, as under Slurm scripts that set it) the first print fails, inside the
    command; buffered, a short output fails only at the final flush, after the command has finished.
    """
    r, w = os.pipe()
    os.close(r)
    env = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    try:
        return legampi(*args, stdout=w, env=env)
    finally:
        os.close(w)


@pytest.mark.parametrize("buffered", [False, True])
@pytest.mark.parametrize(
    "args",
    [
        ["status"],  # ~40 KB: even buffered, the pipe breaks while the table is being printed
        ["status", "--json"],
        ["status", "--brief"],
        ["count"],
        ["--help"],
        ["--version"],
        ["testdata", "--help"],
    ],
)
def test_a_closed_stdout_ends_quietly_with_status_0(ws: Workspace, args: list[str], buffered: bool) -> None:
    register_many(ws, 400)
    p = closed_pipe_run("-c", str(ws.config), *args, buffered=buffered)
    assert (p.returncode, p.stderr) == (0, "")


def test_a_command_that_finished_before_the_pipe_broke_keeps_its_status(tmp_path: Path) -> None:
    """Like ls: a command whose output was all written (here: buffered) exits with its own status; one cut
    off while it was still writing exits 0 (where ls would die of SIGPIPE, status 141)."""
    f = tmp_path / "f.bin"
    f.write_bytes(b"data")
    (tmp_path / "f.bin.sha256").write_text("0" * 64 + "  f.bin\n")
    p = closed_pipe_run("checksum", "hash", str(f), buffered=True)
    assert (p.returncode, p.stderr) == (0, "")
    p = closed_pipe_run("checksum", "check", str(f), buffered=True)
    assert (p.returncode, p.stderr) == (1, "")  # the mismatch stands
    p = closed_pipe_run("checksum", "check", str(f), buffered=False)
    assert (p.returncode, p.stderr) == (0, "")


def test_status_piped_into_head_under_pipefail(ws: Workspace) -> None:
    register_many(ws, 2000)
    script = f'set -o pipefail; "{LEGAMPI}" -c "{ws.config}" status | head -n 2'
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=ENV, timeout=120)
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    assert p.stdout.splitlines()[0].startswith("dataset")


def test_a_broken_pipe_to_a_child_is_still_an_error(tmp_path: Path, monkeypatch, capsys) -> None:
    """Only a closed stdout is the reader leaving; EPIPE from gpg's stdin (say) is a failure."""
    from legampi import checksum, cli

    def broken(*_a: object, **_k: object) -> str:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(checksum, "hash_file", broken)
    f = tmp_path / "f.bin"
    f.write_bytes(b"x")
    assert cli.main(["checksum", "hash", str(f)]) == 1
    assert "legampi checksum: error: [Errno 32] Broken pipe" in capsys.readouterr().err


# ------------------------------------------------------------------ read-only commands need only what they read
def database_only(ws: Workspace, extra: str = "") -> Path:
    path = ws.root / "db-only.ini"
    path.write_text(f"[database]\nurl = {ws.db_url}\n{extra}", encoding="utf-8")
    return path


def test_read_only_commands_need_only_the_database_section(ws: Workspace, tmp_path: Path) -> None:
    register_many(ws, 2)
    cfg = str(database_only(ws))
    status = legampi("-c", cfg, "status")
    assert status.returncode == 0, status.stderr
    assert "DS1" in status.stdout and "long-enough-name-to-fill-a-pipe-00001" in status.stdout
    assert "receiving not listed" in status.stderr and "[workspaces]: missing section" in status.stderr
    js = legampi("-c", cfg, "status", "--json")
    assert js.returncode == 0 and json.loads(js.stdout)["unregistered"] is None  # unknown, not "none"
    report = tmp_path / "r.html"
    assert legampi("-c", cfg, "report", "-o", str(report)).returncode == 0 and "DS1" in report.read_text()
    file_id = json.loads(js.stdout)["files"][0]["file_id"]
    p = legampi("-c", cfg, "update", str(file_id), "failed", "--reason", "operator test")
    assert p.returncode == 0 and "pending -> failed" in p.stdout, p.stdout + p.stderr
    p = legampi("-c", cfg, "log-event", "DS1", "requested")
    assert p.returncode == 0 and "date_requested stamped" in p.stdout, p.stderr


def test_read_only_commands_ignore_broken_sections_they_do_not_read(ws: Workspace) -> None:
    """Keys of another host: status runs; process still refuses, naming what is wrong."""
    register_many(ws, 1)
    text = ws.config.read_text(encoding="utf-8").replace(str(ws.root / "keys" / "archive.pub"), "/nowhere/archive.pub")
    broken = ws.root / "other-host.ini"
    broken.write_text(text, encoding="utf-8")
    p = legampi("status", "-c", str(broken))
    assert (p.returncode, p.stderr) == (0, "") and "DS1" in p.stdout
    p = legampi("process", "-c", str(broken))
    assert p.returncode == 2
    assert p.stderr == (
        f"legampi: configuration error: {broken}: [crypto] archive_public_key: "
        "key file does not exist: /nowhere/archive.pub\n"
    )


def test_a_section_a_read_only_command_uses_is_checked_when_it_is_there(ws: Workspace) -> None:
    """status lists receiving when [workspaces] is given: a broken one is refused up front, one line, no output."""
    text = ws.config.read_text(encoding="utf-8")
    broken = ws.root / "bad-workspaces.ini"
    broken.write_text(text.replace(f"receiving = {ws.receiving}", "receiving = /nowhere/receiving"), encoding="utf-8")
    for command in ("status", "count"):
        p = legampi(command, "-c", str(broken))
        assert (p.returncode, p.stdout) == (2, "")
        assert p.stderr == (
            f"legampi: configuration error: {broken}: [workspaces] receiving: "
            "folder does not exist: /nowhere/receiving\n"
        )


def test_what_a_read_only_command_needs_is_still_checked_first(ws: Workspace) -> None:
    cfg = database_only(ws)
    cfg.write_text("[database]\nurl = sqlite:///relative.db\n", encoding="utf-8")
    p = legampi("status", "-c", str(cfg))
    assert p.returncode == 2
    assert p.stderr.startswith(f"legampi: configuration error: {cfg}: [database] url: SQLite path must be absolute")
    assert p.stderr.count("\n") == 1
    cfg.write_text("[func_conf]\nage_limit = 1\n", encoding="utf-8")
    p = legampi("update", "-c", str(cfg), "1", "failed")
    assert (p.returncode, p.stderr) == (2, f"legampi: configuration error: {cfg}: [database]: missing section\n")


def test_count_and_track_need_no_database_or_keys(ws: Workspace) -> None:
    path = ws.root / "ws-only.ini"
    section = ws.config.read_text(encoding="utf-8").split("[workspaces]")[1].split("[crypto]")[0]
    path.write_text(f"[workspaces]{section}", encoding="utf-8")
    (ws.receiving / "a.c4gh").write_bytes(b"12345")
    p = legampi("count", "-c", str(path))
    assert p.returncode == 0 and "receiving" in p.stdout and "5 B" in p.stdout, p.stderr
    p = legampi("track", "start", "-c", str(path))
    assert p.returncode == 0 and "recorded 1 file(s) of receiving" in p.stdout, p.stderr


def test_every_command_names_known_sections() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        sections = parser.get_default("sections")
        assert sections is None or set(sections) <= set(SECTIONS), name


# ------------------------------------------------------------------ --version, testdata --help
def test_version() -> None:
    p = legampi("--version")
    assert (p.returncode, p.stdout) == (0, f"legampi {__version__}\n")


def test_testdata_help_explains_every_option() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    testdata = sub.choices["testdata"]
    own = [a for a in testdata._actions if a.dest not in ("help", "config", "log_level", "log_format", "log_file")]
    assert {a.dest for a in own} == {"dataset", "files", "size", "sizes", "format", "seed"}
    for a in own:
        text = (a.help or "") % {"default": a.default}
        assert len(text) > 20, f"--{a.dest} is not explained"
        if a.default is not None:
            assert "default" in text, f"--{a.dest} does not say its default"
    size = testdata._option_string_actions["--size"].help or ""
    assert "1MB" in size and "KiB" in size and "1000" in size and "1024" in size  # units and default
    assert "lognormal:MEDIAN,SIGMA" in (testdata._option_string_actions["--sizes"].help or "")
    out = legampi("testdata", "--help").stdout
    assert "receiving/DATASET/" in out and "inbox_secret_key" in out
