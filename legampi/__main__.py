"""`python -m legampi` is the `legampi` command (used under mpiexec where no console script is on PATH)."""

import sys

from .cli import main

sys.exit(main())
