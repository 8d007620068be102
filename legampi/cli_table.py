"""The command table: each command's name, help, options and the configuration sections it needs.

`legampi --help` and every `legampi COMMAND --help` are made from these rows by build_parser(); the
command bodies are in commands.py (what changes things) and views.py (what only reads).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import __version__, commands, views
from . import config as config_mod
from .status import STATUSES

Arg = tuple[tuple[str, ...], dict[str, Any]]


def arg(*flags: str, **options: Any) -> Arg:
    """One `add_argument` call, as data."""
    return flags, options


@dataclass(frozen=True)
class Command:
    """One row of the command table. SECTIONS: the configuration sections checked before it runs (a
    read-only command names only what it reads, so it runs where the keys or workspaces are absent);
    None: it needs no configuration at all. OPTIONAL: sections it uses if the file has them, checked then."""

    name: str
    run: Callable[[Any, argparse.Namespace], int]
    help: str
    args: tuple[Arg, ...] = ()
    sections: tuple[str, ...] | None = config_mod.SECTIONS
    optional: tuple[str, ...] = ()


DESCRIPTION = (
    "Move encrypted genomic datasets from a transfer end-point into a Crypt4GH archive: "
    "notice finished transfers, decrypt as a stream, verify checksums, re-encrypt for the "
    "archive key, move atomically, record everything. Run under mpiexec/srun for many ranks."
)

# accepted before the command (`legampi -c x.ini status`) and after it (`legampi status -c x.ini`)
GLOBAL_OPTIONS = (
    arg("-c", "--config", help=f"configuration INI file (default: ${config_mod.ENV_CONFIG})"),
    arg("--log-level", default="info", choices=["debug", "info", "warning", "error"]),
    arg(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one JSON object per line for a log collector",
    ),
    arg("--log-file", help="also append log lines to this file"),
)

SHARE = (
    arg(
        "--branches",
        type=int,
        help="take share --branch of N by the seed formula, number branch + branches*n (process: the "
        "file's registration number, file_number; monitor: its place in the sorted listing); "
        "default: the Slurm array task's share, else everything",
    ),
    arg("--branch", type=int, help="which share, 1..N"),
)
DATASET = arg("--dataset")
LOG_EVENTS = ("requested", "download_start", "download_end", "processing_end")

COMMANDS = (
    Command("init-db", commands.cmd_init_db, "create or upgrade the tracking database schema (idempotent)"),
    Command(
        "register",
        commands.cmd_register,
        "register a dataset manifest (tab or EGA JSON) in one transaction",
        (
            arg("manifest", help="tab manifest (name<TAB>md5[<TAB>size[<TAB>sha256]]) or EGA JSON file"),
            arg("--dataset", help="dataset id (default: from the JSON, or the manifest's base name)"),
            arg(
                "--amend",
                action="store_true",
                help="correct the expected checksums and sizes of files not yet available (old values kept in the "
                "event log; failed files whose checksum changed are retried by the next process)",
            ),
        ),
    ),
    Command(
        "fetch-metadata",
        commands.cmd_fetch_metadata,
        "download a dataset's file list from the EGA API into metadata",
        (arg("dataset_id"), arg("--register", action="store_true", help="also register it")),
    ),
    Command(
        "monitor",
        commands.cmd_monitor,
        "one transfer-monitor pass: track receiving, move finished files to processing",
        SHARE,
    ),
    Command(
        "status",
        views.status,
        "datasets and files by status, the four dataset timestamps",
        (
            DATASET,
            arg("--json", action="store_true", help='print {"datasets": [...], "files": [...]}'),
            arg("--brief", action="store_true", help="datasets only, no per-file table"),
        ),
        ("database",),
        ("workspaces",),  # receiving, for the unregistered files
    ),
    Command(
        "process",
        commands.cmd_process,
        "the batch job: archive every registered file in processing "
        "(run under mpiexec/srun; rank 0 coordinates, the others stream files)",
        (
            arg(
                "--schedule",
                choices=["dynamic", "static"],
                default="dynamic",
                help="dynamic: largest file first to whichever rank is free (default); static: the seed's "
                "round-robin, file number branch + branches*n per rank",
            ),
            *SHARE,
            arg("--retry-failed", action="store_true", help="also take files recorded as failed"),
            arg("--dataset", help="only this dataset"),
            arg("--limit", type=int, help="claim at most N files"),
            arg("--no-recover", action="store_true", help="skip the recovery step before processing"),
            arg(
                "--progress-interval",
                type=float,
                default=60.0,
                help="seconds between progress log lines when not on a terminal (default 60)",
            ),
        ),
    ),
    Command(
        "recover",
        commands.cmd_recover,
        "release dead jobs' claims, remove temporary files, record verified archived "
        "copies that have no row, remove processed sources",
    ),
    Command(
        "process-file",
        commands.cmd_process_file,
        "archive one file in processing, no MPI, no database update; prints the result",
        (
            arg("path"),
            arg("--md5", help="expected plaintext md5 (default: from the database)"),
            arg("--sha256", help="expected plaintext sha256 (default: from the database)"),
        ),
    ),
    Command(
        "checksum",
        commands.cmd_checksum,
        "hash a file, or check it against its sidecar",
        (
            arg("action", choices=["hash", "check"]),
            arg("path"),
            arg("--algo", choices=["sha256", "md5"], default="sha256"),
        ),
        None,
    ),
    Command(
        "update",
        commands.cmd_update,
        "set a file's status by hand (recorded as an event)",
        (
            arg("file_id"),
            arg("status", choices=list(STATUSES)),
            arg("--reason", help="why (kept in the event; the error text when status is failed)"),
            arg("--force", action="store_true", help="change it even while a running job holds the file's claim"),
        ),
        ("database",),
    ),
    Command(
        "log-event",
        commands.cmd_log_event,
        "stamp one of a dataset's dates now (the seed's datasetlogger)",
        (arg("dataset_id"), arg("event", choices=[*LOG_EVENTS, *(f"date_{e}" for e in LOG_EVENTS)])),
        ("database",),
    ),
    Command(
        "verify-archive",
        commands.cmd_verify_archive,
        "fixity audit: hash every archived file again and compare "
        "with the database and sidecars (run under mpiexec/srun like process)",
        (
            DATASET,
            arg(
                "--decrypt",
                action="store_true",
                help="also decrypt with [crypto] archive_secret_key and compare plaintext md5/sha256",
            ),
        ),
    ),
    Command(
        "report",
        views.report,
        "write a self-contained HTML report (datasets, timeline, throughput, failures)",
        (arg("-o", "--output", required=True, help="the HTML file to write"), DATASET),
        ("database",),
    ),
    Command(
        "demo",
        commands.cmd_demo,
        "run the whole pipeline on throwaway keys and data in a new folder (SQLite, "
        "local folders, the packaged mpiexec)",
        (
            arg("folder", nargs="?", help="an empty or new folder (default: a new temporary folder)"),
            arg("--files", type=int, default=36),
            arg("--ranks", type=int, default=3, help="MPI ranks for process (default 3: 2 workers)"),
            arg(
                "--archive",
                choices=("posix", "s3"),
                default="posix",
                help="archive into a folder (default), or into an S3 bucket on a local SeaweedFS started for the demo",
            ),
        ),
        None,
    ),
    Command(
        "testdata",
        commands.cmd_testdata,
        "write encrypted test files into receiving and their manifests (tab and "
        "EGA JSON) into metadata, with real checksums",
        (
            arg(
                "--dataset",
                default="EGAD00000000001",
                help="dataset id: the files go to receiving/DATASET/sampleNNNN.bam.EXT, the manifests to "
                "metadata/DATASET.tab and DATASET.json (default %(default)s)",
            ),
            arg("--files", type=int, default=10, help="how many files to write (default %(default)s)"),
            arg(
                "--size",
                help="the plaintext size of every file: bytes, or a number with a unit, decimal kB/MB/GB (powers "
                "of 1000) or binary KiB/MiB/GiB (powers of 1024), e.g. 10MB (default 1MB; --sizes overrides it)",
            ),
            arg(
                "--sizes",
                help="mixed plaintext sizes instead, drawn from a lognormal distribution: lognormal:MEDIAN,SIGMA, "
                "MEDIAN a size as for --size and SIGMA the spread of its natural logarithm, e.g. lognormal:20MB,1.5",
            ),
            arg(
                "--format",
                choices=["c4gh", "cip", "gpg", "plain"],
                default="c4gh",
                help="how the files are encrypted: c4gh for the public key of [crypto] inbox_secret_key (default), "
                "cip the legacy AES format with [crypto] legacy_password, gpg OpenPGP for the first key in "
                "[crypto] gnupg_home, plain not encrypted",
            ),
            arg(
                "--seed",
                type=int,
                default=1,
                help="random seed of the file contents and the --sizes draw: the same seed writes the same files "
                "(default %(default)s)",
            ),
        ),
    ),
    Command("count", views.count, "files and bytes per workspace (the seed's FileCount)", (), ("workspaces",)),
    Command(
        "track",
        views.track,
        "record receiving before a transfer, the archive after, and list what was lost (the seed's TrackItems)",
        (
            arg("action", choices=["start", "end", "compare"]),
            arg("--state", help="where to keep the lists (default: metadata/legampi-track.json)"),
        ),
        ("workspaces", "func_conf"),
    ),
    Command(
        "rekey",
        commands.cmd_rekey,
        "rotate the archive key: re-encrypt every archived file's header for a new "
        "public key, payload unchanged (run under mpiexec/srun like process; resumes after interruption)",
        (
            arg("--new-archive-public-key", required=True, metavar="PATH"),
            arg(
                "--new-archive-secret-key",
                metavar="PATH",
                help="also check each rotated file decrypts with it (passphrase from $LEGAMPI_NEW_ARCHIVE_PASSPHRASE)",
            ),
            arg("--dataset", help="only this dataset"),
            arg("--limit", type=int, help="rotate at most N files this run"),
        ),
    ),
    Command(
        "export",
        commands.cmd_export,
        "export a dataset for a researcher: archived files with their header "
        "re-encrypted for the researcher's public key, a sha256 manifest and a file list",
        (
            arg("dataset_id"),
            arg("--recipient-pk", required=True, metavar="PATH", help="the researcher's Crypt4GH public key"),
            arg("--to", required=True, metavar="DIR", help="export folder (created; files are never overwritten)"),
            arg("--partial", action="store_true", help="export the archived files even if some are not yet"),
            arg(
                "--verify",
                action="store_true",
                help="also decrypt each payload in memory and compare plaintext md5/sha256",
            ),
        ),
    ),
)


def _add(parser: argparse.ArgumentParser | Any, args: Sequence[Arg], **override: Any) -> None:
    for flags, options in args:
        parser.add_argument(*flags, **{**options, **override})


class _CommandHelp(argparse.HelpFormatter):
    """A command's usage line without the global options: they have their own group in its --help."""

    GLOBAL = {a[0][-1].lstrip("-").replace("-", "_") for a in GLOBAL_OPTIONS}

    def add_usage(self, usage: str | None, actions: Any, groups: Any, prefix: str | None = None) -> None:
        super().add_usage(usage, [a for a in actions if a.dest not in self.GLOBAL], groups, prefix)


def build_parser() -> argparse.ArgumentParser:
    """The `legampi` parser: the global options, then one sub-parser per row of COMMANDS."""
    p = argparse.ArgumentParser(prog="legampi", description=DESCRIPTION)
    _add(p, GLOBAL_OPTIONS)
    p.add_argument("--version", action="version", version=f"legampi {__version__}")
    # The same options after the command; SUPPRESS: absent there, they keep the value given before it.
    after = argparse.ArgumentParser(add_help=False)
    _add(
        after.add_argument_group("global options (before or after the command)"),
        GLOBAL_OPTIONS,
        default=argparse.SUPPRESS,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for c in COMMANDS:
        sp = sub.add_parser(c.name, help=c.help, description=c.help, parents=[after], formatter_class=_CommandHelp)
        sp.set_defaults(func=c.run, sections=c.sections, optional=c.optional)
        _add(sp, c.args)
    return p
