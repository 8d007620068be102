"""jobscripts/: the #SBATCH header an operator edits and the srun MPI plugin switch, without Slurm.

The scripts run under bash with stand-ins for `srun` (records its arguments) and `legampi`; what they do
under a real Slurm is tests/slurm/test_jobscripts.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

JOBSCRIPTS = Path(__file__).resolve().parents[2] / "jobscripts"


def sbatch_lines(script: str) -> tuple[list[str], list[str]]:
    """(active #SBATCH options, inactive ##SBATCH hints) of a job script's header."""
    active, hints = [], []
    for line in (JOBSCRIPTS / script).read_text().splitlines():
        if line.startswith("#SBATCH "):
            active.append(line.removeprefix("#SBATCH "))
        elif line.startswith("##SBATCH "):
            hints.append(line.removeprefix("##SBATCH "))
    return active, hints


@pytest.mark.parametrize(
    ("script", "log"),
    [("ingest.sbatch", "%x-%j.out"), ("ingest-array.sbatch", "%x-%A_%a.out"), ("monitor.sbatch", "%x-%j.out")],
)
def test_log_names_and_resource_hints(script: str, log: str) -> None:
    active, hints = sbatch_lines(script)
    assert f"--output={log}" in active
    names = {h.split("=")[0] for h in hints}
    assert {"--partition", "--account"} <= names
    if script != "monitor.sbatch":
        assert {"--nodes", "--cpus-per-task", "--mem-per-cpu"} <= names
        assert not any(a.startswith(("--nodes", "--cpus-per-task", "--mem")) for a in active), "hints stay hints"
    text = (JOBSCRIPTS / script).read_text()
    assert "--mpi=pmi2" not in text.replace("default pmi2", ""), "the plugin is a switch, not hard-coded"


@pytest.fixture
def stubs(tmp_path: Path) -> dict[str, str]:
    """PATH with a recording `srun`; LEGAMPI pointing at a stand-in; a config file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n')
    (bin_dir / "legampi").write_text('#!/bin/bash\necho "legampi 0.0-stub"\n')
    for p in bin_dir.iterdir():
        p.chmod(0o755)
    (tmp_path / "legampi.ini").write_text("[database]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LEGAMPI"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", LEGAMPI=str(bin_dir / "legampi"))
    env.update(SRUN_ARGS=str(tmp_path / "srun.args"), CONFIG=str(tmp_path / "legampi.ini"))
    return env


def run_script(script: str, env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    proc = subprocess.run(
        ["bash", str(JOBSCRIPTS / script), env["CONFIG"], *args], env=env, capture_output=True, text=True, timeout=60
    )
    recorded = Path(env["SRUN_ARGS"])
    return proc, recorded.read_text().splitlines() if recorded.exists() else []


@pytest.mark.parametrize("plugin", [None, "pmix", "pmix_v4"])
def test_ingest_passes_the_mpi_plugin_to_srun(stubs: dict[str, str], plugin: str | None) -> None:
    if plugin:
        stubs["LEGAMPI_SRUN_MPI"] = plugin
    proc, argv = run_script("ingest.sbatch", stubs, "--dataset", "EGAD1")
    assert proc.returncode == 0, proc.stderr
    assert argv == [
        f"--mpi={plugin or 'pmi2'}",
        "--kill-on-bad-exit=1",
        stubs["LEGAMPI"],
        "-c",
        stubs["CONFIG"],
        "process",
        "--dataset",
        "EGAD1",
    ]
    assert f"srun --mpi={plugin or 'pmi2'}," in proc.stdout


def test_array_task_passes_the_plugin_and_its_share(stubs: dict[str, str]) -> None:
    stubs.update(
        LEGAMPI_SRUN_MPI="pmix",
        SLURM_ARRAY_TASK_ID="5",
        SLURM_ARRAY_TASK_COUNT="3",
        SLURM_ARRAY_TASK_MIN="1",
        SLURM_ARRAY_TASK_MAX="5",
        SLURM_ARRAY_TASK_STEP="2",
    )
    proc, argv = run_script("ingest-array.sbatch", stubs)
    assert proc.returncode == 0, proc.stderr
    assert argv[0] == "--mpi=pmix" and argv[-4:] == ["--branches", "3", "--branch", "3"]


@pytest.mark.parametrize("script", ["ingest.sbatch", "ingest-array.sbatch"])
def test_a_malformed_plugin_is_refused_before_srun(stubs: dict[str, str], script: str) -> None:
    stubs.update(LEGAMPI_SRUN_MPI="pmi2 --export=NONE", SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="1")
    stubs.update(SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_MAX="1")
    proc, argv = run_script(script, stubs)
    assert proc.returncode == 2 and argv == []
    assert "LEGAMPI_SRUN_MPI must name an srun --mpi plugin" in proc.stderr
