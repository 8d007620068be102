"""The demo's key pairs: crypt4gh's notice about an unencrypted key is dropped, nothing else is."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from legampi import demo


def test_only_the_unencrypted_key_notice_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import crypt4gh.keys.c4gh as c4gh

    real = c4gh.generate

    def noisy(*args: object, **kw: object) -> None:
        print("something else crypt4gh wants said", file=sys.stderr)
        real(*args, **kw)  # prints the notice itself (crypt4gh 1.8), with passphrase=None

    monkeypatch.setattr(c4gh, "generate", noisy)
    sk, pk = demo._keypair(tmp_path, "inbox")
    err = capsys.readouterr().err
    assert err == "something else crypt4gh wants said\n"
    assert sk.read_text().startswith("-----BEGIN CRYPT4GH PRIVATE KEY-----") and pk.is_file()
    assert sk.stat().st_mode & 0o777 == 0o600


def test_real_key_generation_says_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    demo._keypair(tmp_path, "archive")
    assert capfd.readouterr() == ("", "")


def test_next_steps_are_quoted_for_the_shell(tmp_path: Path) -> None:
    root = tmp_path / "demo with space"
    steps = [shlex.split(s) for s in demo.next_steps(root / "legampi.ini", root)]
    assert steps == [
        ["legampi", "-c", f"{root}/legampi.ini", "status"],
        ["legampi", "-c", f"{root}/legampi.ini", "report", "-o", f"{root}/report.html"],
        ["legampi", "-c", f"{root}/legampi.ini", "verify-archive", "--decrypt"],
    ]


def test_a_failing_step_stops_the_demo_with_its_exit_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """E.g. init-db without its schema (the --user install of issue 17): one line, no traceback."""
    ran: list[list[str]] = []

    def fake_run(cmd: list[str], *a: object, **kw: object) -> subprocess.CompletedProcess:
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, 2 if "init-db" in cmd else 0)

    monkeypatch.setattr(demo.subprocess, "run", fake_run)
    assert demo.run(tmp_path / "d", files=2, ranks=2) == 2
    out, err = capsys.readouterr()
    assert err == "legampi demo: `legampi init-db` failed (exit 2); stopped\n"
    assert len(ran) == 1 and "Next:" not in out
