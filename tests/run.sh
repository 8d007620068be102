#!/usr/bin/env bash
# The test command: the benchmark's quick smoke mode (so it cannot rot), then every test suite in one
# pytest run (unit, database on SQLite and PostgreSQL, real mpiexec, Slurm, browser).
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/ingest.py --smoke
python benchmarks/s3.py --smoke
python benchmarks/rank0_scaling.py --smoke
python benchmarks/smallfiles.py --smoke
python benchmarks/overlap.py --smoke
python benchmarks/bookkeeping.py --db-only --smoke
python benchmarks/file_number.py --smoke
python benchmarks/smallfiles.py huge --size 16MB --repeat 1
python -m pytest -q -p no:cacheprovider tests "$@"
