"""`python -m legampi` is the `legampi` command (used under mpiexec where no console script is on PATH)."""

from .cli import entry

entry()
