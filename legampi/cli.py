"""`legampi <command>`: argument parsing and dispatch only.

The parser comes from the command table (cli_table.py); this module loads the configuration the
command needs, runs it on the right MPI ranks, and turns every failure into one line and an exit status.
"""

from __future__ import annotations

import argparse
import gc
import os
import select
import sys
from collections.abc import Sequence

from . import config as config_mod
from .cli_table import build_parser
from .commands import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .config import Config, ConfigError
from .db import DatabaseError
from .logs import setup_logging
from .parallel import LaunchError

__all__ = ["build_parser", "entry", "main"]
MPI_COMMANDS = ("process", "verify-archive", "rekey")  # every rank runs them; the others run on rank 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, load the configuration the command needs, run it; every failure becomes one line and a status."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format, args.log_file)
    team_cmd = args.command in MPI_COMMANDS
    try:
        cfg = (
            None
            if args.sections is None
            else config_mod.load(args.config, sections=args.sections, optional=args.optional)
        )
        if not team_cmd and _launched_by_mpi():
            return _rank0_only(cfg, args)
        return args.func(cfg, args)
    except ConfigError as exc:
        print(f"legampi: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LaunchError as exc:
        print(f"legampi {args.command}: refusing to start: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError as exc:
        if _stdout_closed():  # the reader left (`legampi status | head`): stop quietly, like ls
            if team_cmd and _world_size() > 1:
                _crash(exc)  # the other ranks wait for rank 0: end them
            _quiet_stdout()
            return EXIT_OK
        return _failed(args.command, team_cmd, exc)  # a pipe to a child (gpg...): a real error
    except (DatabaseError, ValueError, OSError) as exc:
        return _failed(args.command, team_cmd, exc)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        if team_cmd and _world_size() > 1 and not isinstance(exc, SystemExit):
            _crash(exc)
        raise


def _failed(command: str, team_cmd: bool, exc: Exception) -> int:
    if team_cmd and _world_size() > 1:
        _crash(exc)
    print(f"legampi {command}: error: {exc}", file=sys.stderr)
    return EXIT_FAILED if not isinstance(exc, DatabaseError) else EXIT_USAGE


def _stdout_closed() -> bool:
    """True when stdout is a pipe or socket whose reader has gone (poll reports an error on it)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False  # not a file (tests capture stdout in memory)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that what is still buffered (and the final flush) goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def _launched_by_mpi() -> bool:
    from .parallel import launched_by_mpi

    return launched_by_mpi()


def _rank0_only(cfg: Config | None, args: argparse.Namespace) -> int:
    """A one-rank command started under mpiexec/srun runs on rank 0 only; the other ranks wait for its
    exit status (so `mpiexec -n 4 legampi monitor` is one pass, not four racing ones)."""
    from .parallel import Team

    team = Team()
    code = EXIT_FAILED
    try:
        if team.coordinator:
            code = args.func(cfg, args)
    finally:
        code = team.bcast(code)
    return code


def _world_size() -> int:
    if "mpi4py.MPI" not in sys.modules:
        return 1
    return sys.modules["mpi4py.MPI"].COMM_WORLD.Get_size()


def _crash(exc: BaseException) -> None:
    from .parallel import Team, report_crash

    report_crash(Team(), exc)


def entry() -> None:
    """The `legampi` command: main(), then leave without the interpreter's final garbage collection
    over every imported module (~10 ms per process, paid by each rank at the end of every job)."""
    try:
        code: int | str | None = main()
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        code = exc.code
    try:
        sys.stdout.flush()  # here, not at interpreter exit, where a closed pipe means a message and status 120
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        _quiet_stdout()  # the reader left after the command's last line: its status stands
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
