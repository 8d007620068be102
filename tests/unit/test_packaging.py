"""Packaging metadata the install paths rely on (the installs themselves: tests/install_check.sh).

pyproject.toml declares only the PEP 517/518 build system; the metadata stays in setup.cfg (setup.py
is a shim), as the design card asks, so a [project] table there would silently take precedence.
"""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the checks are the same on 3.10


def test_pyproject_declares_the_setuptools_build_backend_only() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert data["build-system"]["build-backend"] == "setuptools.build_meta"
    assert any(r.replace(" ", "").startswith("setuptools>=") for r in data["build-system"]["requires"])
    assert "project" not in data, "metadata lives in setup.cfg"
    assert (ROOT / "setup.py").is_file()


def test_setup_cfg_states_python_and_classifiers() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    assert cfg["options"]["python_requires"].strip() == ">=3.10"
    ruff = tomllib.loads((ROOT / "ruff.toml").read_text(encoding="utf-8"))
    assert ruff["target-version"] == "py310", "lint target and python_requires name one oldest Python"
    classifiers = cfg["metadata"]["classifiers"].split("\n")
    assert "Programming Language :: Python :: 3 :: Only" in classifiers
    assert "Programming Language :: Python :: 3.10" in classifiers
    assert "Operating System :: POSIX :: Linux" in classifiers
    requires = cfg["options"]["install_requires"]
    assert "urllib3>=2" in requires, "httpretry imports urllib3's Retry (backoff_max needs 2.x)"


def test_install_check_script_parses() -> None:
    subprocess.run(["bash", "-n", str(ROOT / "tests" / "install_check.sh")], check=True)
