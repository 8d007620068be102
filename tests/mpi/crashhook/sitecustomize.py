"""Test-only fault injection, loaded through PYTHONPATH: makes one rank raise inside the pipeline.

LEGAMPI_TEST_CRASH_RANK=R makes rank R raise RuntimeError on its first file, which must end the whole
MPI job promptly with a non-zero status (no hang until the walltime).
"""

import os

if os.environ.get("LEGAMPI_TEST_CRASH_RANK"):
    import legampi.stream as _stream

    _real = _stream.start_file  # under both process_file and process_file_overlapped

    def start_file(task, ctx, **kw):
        from mpi4py import MPI

        if MPI.COMM_WORLD.Get_rank() == int(os.environ["LEGAMPI_TEST_CRASH_RANK"]):
            raise RuntimeError(f"injected crash on rank {MPI.COMM_WORLD.Get_rank()}")
        return _real(task, ctx, **kw)

    _stream.start_file = start_file
