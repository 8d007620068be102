"""The commands that change things: database set-up, registration, transfers, the MPI jobs, test data.

Each `cmd_*` takes the loaded configuration and the parsed arguments and returns the exit status; the
parser that reaches them is the command table in cli.py. The work itself lives in the modules each
command imports (lazily: every MPI rank starts the `legampi` command, and pays for every import).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import Config, ConfigError
from .db import Database

log = logging.getLogger("legampi")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def connector(cfg: Config) -> Callable[[], Database]:
    """A way to open the database, for the MPI commands that open it on the ranks that need it."""
    return lambda: Database.connect(cfg.database)


def open_db(cfg: Config, schema: bool = True) -> Database:
    """The tracking database, refused (DatabaseError) unless its schema is there and current."""
    db = Database.connect(cfg.database)
    if schema:
        db.require_schema()
    return db


def cmd_init_db(cfg: Config, args: argparse.Namespace) -> int:
    """`legampi init-db`: create the schema or upgrade it in place; safe to run again."""
    db = open_db(cfg, schema=False)
    before, after = db.init_schema(cfg.func.extensions)
    print(f"{db.label}: schema version {before or 'none'} -> {after}")
    return EXIT_OK


def cmd_register(cfg: Config, args: argparse.Namespace) -> int:
    """`legampi register`: a manifest's files, refused whole if one line cannot be archived; --amend corrects."""
    from . import manifest, registration

    db = open_db(cfg)
    ds, entries = manifest.load(Path(args.manifest), args.dataset)
    entries = registration.prepare(entries, cfg, str(args.manifest))
    if not getattr(args, "amend", False):
        added, unchanged = db.register(ds, entries, str(args.manifest))
        print(f"dataset {ds}: {added} file(s) registered, {unchanged} already registered")
        return EXIT_OK
    processing = cfg.workspaces.processing
    done = db.amend(ds, entries, str(args.manifest), lambda rel: (processing / rel).is_file())
    print(
        f"dataset {ds}: {done.amended} file(s) amended ({len(done.retried)} failed file(s) back to received), "
        f"{done.added} registered, {done.unchanged} unchanged"
    )
    for name in done.stuck:
        print(
            f"{name}: checksum corrected but it stays failed: its source is not in {processing} "
            "(quarantined?); put it back there and run `legampi process --retry-failed`"
        )
    return EXIT_OK


def cmd_fetch_metadata(cfg: Config, args: argparse.Namespace) -> int:
    """`legampi fetch-metadata`: the EGA file list into metadata (renamed into place), then maybe registered."""
    from . import manifest

    if not cfg.api.api_url:
        raise ConfigError(cfg.path, "api", "api_url", "missing (needed by fetch-metadata)")
    text = manifest.fetch_metadata(
        cfg.api.api_url,
        args.dataset_id,
        cfg.api.api_user,
        cfg.api.api_pass.reveal() if cfg.api.api_pass else None,
        cfg.api.timeout,
        cfg.api.retries,
    )
    folder = cfg.workspaces.metadata
    if folder is None:
        raise ConfigError(cfg.path, "workspaces", "metadata", "missing (fetch-metadata stores the JSON there)")
    target = folder / f"{args.dataset_id}.json"
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    print(f"metadata of {args.dataset_id} saved to {target}")
    if args.register:
        args.manifest, args.dataset = str(target), args.dataset_id
        return cmd_register(cfg, args)
    return EXIT_OK


def cmd_monitor(cfg: Config, args: argparse.Namespace) -> int:
    """`legampi monitor`: one pass; exit 1 if a move failed, so a cron or Slurm job shows it."""
    from .monitor import run_pass
    from .workspace import array_share

    db = open_db(cfg)
    branches, branch = array_share(args.branches, args.branch)
    rep = run_pass(
        db,
        cfg.workspaces.receiving,
        cfg.workspaces.processing,
        cfg.func.age_limit,
        cfg.func.pass_limit,
        branches,
        branch,
    )
    print(
        f"monitor pass: {len(rep.moved)} moved to processing, {rep.tracked} newly tracked, "
        f"{rep.waiting} waiting, {len(rep.unregistered)} unregistered"
    )
    for name in rep.moved:
        print(f"  moved {name}")
    for e in rep.errors:
        log.error("%s", e)
    return EXIT_FAILED if rep.errors else EXIT_OK


def mpi_team(args: argparse.Namespace) -> Any:
    """The MPI team of this rank, checked for a sane launch; log lines from now on carry the rank."""
    from .logs import setup_logging
    from .parallel import Team

    team = Team()
    team.check_launch()
    setup_logging(args.log_level, args.log_format, args.log_file, team.rank)
    return team


def cmd_process(cfg: Config, args: argparse.Namespace) -> int:
    """`legampi process`, the batch job on every rank."""
    from .ingest import run_process
    from .parallel import StopFlag
    from .workspace import array_share

    stop = StopFlag()
    stop.install()  # before MPI starts: an early USR1/TERM must not kill the rank
    team = mpi_team(args)
    branches, branch = array_share(args.branches, args.branch)
    return run_process(
        cfg,
        team,
        connector(cfg),
        schedule=args.schedule,
        branches=branches,
        branch=branch,
        retry_failed=args.retry_failed,
        dataset=args.dataset,
        limit=args.limit,
        recover_first=not args.no_recover,
        progress_interval=args.progress_interval,
        should_stop=stop,
    )


def cmd_recover(cfg: Config, args: argparse.Namespace) -> int:
    """`legampi recover`: what `process` does first, on its own; exit 1 if something needs a person."""
    from .recovery import recover

    rep = recover(open_db(cfg), cfg)
    for line in rep.lines():
        print(line)
    return EXIT_FAILED if rep.problems else EXIT_OK


def cmd_process_file(cfg: Config, args: argparse.Namespace) -> int:
    """`legampi process-file`: one file through the pipeline, to debug a format or a key without MPI or the database."""
    from .stream import FileTask, PipelineContext, process_file

    path = Path(args.path).absolute()
    try:
        rel = path.relative_to(cfg.workspaces.processing).as_posix()
    except ValueError:
        raise ConfigError(cfg.path, "workspaces", "processing", f"{path} is not inside the processing folder") from None
    md5, sha = args.md5, args.sha256
    file_id = rel
    if md5 is None and sha is None:
        rows = open_db(cfg).files(names=[rel])
        if not rows:
            print(f"{rel}: not registered; give --md5/--sha256 or register its manifest", file=sys.stderr)
            return EXIT_FAILED
        md5, sha, file_id = rows[0]["md5"], rows[0]["sha256"], rows[0]["file_id"]
    r = process_file(
        FileTask(file_id, "", rel, md5, sha, path.stat().st_size if path.exists() else None),
        PipelineContext.from_config(cfg),
    )
    json.dump({k: v for k, v in vars(r).items()}, sys.stdout, indent=2, default=str)
    print()
    return EXIT_OK if r.status == "available" else EXIT_FAILED


def cmd_checksum(cfg: Config | None, args: argparse.Namespace) -> int:
    """`legampi checksum hash|check`: hash a file, or check it against its sidecar; needs no configuration."""
    from . import checksum

    path = Path(args.path)
    if args.action == "hash":
        print(f"{checksum.hash_file(path, args.algo)}  {path.name}")
        return EXIT_OK
    side = path if path.suffix in (".sha256", ".md5") else checksum.sidecar_path(path, args.algo)
    ok, expected, found = checksum.check_sidecar(side)
    print(f"{side}: {'OK' if ok else 'MISMATCH'} (expected {expected}, found {found})")
    return EXIT_OK if ok else EXIT_FAILED


def cmd_update(cfg: Config, args: argparse.Namespace) -> int:
    """`legampi update`: an operator's status change, kept as an event with who and why."""
    db = open_db(cfg)
    holder = _live_holder(db, cfg, args.file_id)
    if holder is not None and not args.force:
        print(
            f"legampi update: file {args.file_id} is claimed by job {holder['job_id']} ({holder['command']} on "
            f"{holder['host']}, pid {holder['pid']}), which is alive: changing its status now could let a second "
            "job take it or lose that job's result; nothing changed. Wait for the job to end (or run `legampi "
            "recover` if it died), or pass --force",
            file=sys.stderr,
        )
        return EXIT_FAILED
    try:
        old = db.set_status(
            args.file_id,
            args.status,
            "status-set",
            f"by operator {os.environ.get('USER', '?')}: {args.reason or 'no reason given'}",
            error=args.reason if args.status == "failed" else None,
        )
    except KeyError:
        print(f"no file with id {args.file_id!r}", file=sys.stderr)
        return EXIT_FAILED
    print(f"file {args.file_id}: {old['status']} -> {args.status}")
    return EXIT_OK


def _live_holder(db: Any, cfg: Config, file_id: str) -> dict[str, Any] | None:
    """The running job (by `recover`'s test: its pid, Slurm, its heartbeat) that holds FILE_ID's claim, if any."""
    from .archived_claims import dead_job_check

    row = db.file_row(file_id)
    if row is None or not row.claimed_by:
        return None
    dead = dead_job_check(db, cfg.func.claim_timeout)
    return next((j for j in db.running_jobs() if j["job_id"] == row.claimed_by and not dead(j)), None)


def cmd_log_event(cfg: Config, args: argparse.Namespace) -> int:
    """`legampi log-event`: stamp a dataset date now (the seed's datasetlogger), with its event."""
    from .db import Event

    db = open_db(cfg)
    column = args.event if args.event.startswith("date_") else f"date_{args.event}"
    if not db.datasets(args.dataset_id):
        print(f"no dataset {args.dataset_id!r}", file=sys.stderr)
        return EXIT_FAILED
    with db.transaction():
        db.stamp_dataset([args.dataset_id], column, only_if_null=False)
        db.add_events([Event(None, args.dataset_id, column, None, "by operator")])
    print(f"dataset {args.dataset_id}: {column} stamped")
    return EXIT_OK


def cmd_verify_archive(cfg: Config, args: argparse.Namespace) -> int:
    """`legampi verify-archive`: the fixity audit on every rank."""
    from .verify import run_verify

    return run_verify(cfg, mpi_team(args), connector(cfg), args.dataset, args.decrypt)


def cmd_demo(cfg: Config | None, args: argparse.Namespace) -> int:
    """`legampi demo`: the whole pipeline in a throwaway folder, no configuration needed."""
    from .demo import run

    return run(Path(args.folder) if args.folder else None, args.files, args.ranks, archive=args.archive)


def cmd_testdata(cfg: Config, args: argparse.Namespace) -> int:
    """`legampi testdata`: encrypted test files for this configuration's keys, with their manifests."""
    from .keys import load_secret_key, public_from_secret
    from .testdata import make_dataset, sizes_from_spec

    sizes = sizes_from_spec(args.files, args.size, args.sizes, args.seed)
    keys: dict[str, Any] = {}
    if args.format == "c4gh":
        if cfg.crypto.inbox_secret_key is None:
            raise ConfigError(cfg.path, "crypto", "inbox_secret_key", "missing (c4gh test files are made for it)")
        pw = cfg.crypto.inbox_passphrase.reveal() if cfg.crypto.inbox_passphrase else None
        keys["inbox_pk"] = public_from_secret(load_secret_key(cfg.crypto.inbox_secret_key, pw))
    elif args.format == "cip":
        keys["legacy_password"] = cfg.crypto.legacy_password.reveal() if cfg.crypto.legacy_password else None
        keys["legacy_cipher"] = cfg.crypto.legacy_cipher
    elif args.format == "gpg":
        keys["gpg_home"] = cfg.crypto.gnupg_home
    metadata = cfg.workspaces.metadata or cfg.workspaces.receiving
    entries = make_dataset(cfg.workspaces.receiving, metadata, args.dataset, sizes, args.format, seed=args.seed, **keys)
    print(
        f"{len(entries)} {args.format} file(s), {sum(sizes)} plaintext bytes, in {cfg.workspaces.receiving}; "
        f"manifests {metadata / (args.dataset + '.tab')} and {metadata / (args.dataset + '.json')}"
    )
    return EXIT_OK


def cmd_rekey(cfg: Config, args: argparse.Namespace) -> int:
    """`legampi rekey`: the archive key rotation on every rank."""
    from .rekey_job import run_rekey

    return run_rekey(
        cfg,
        mpi_team(args),
        connector(cfg),
        args.new_archive_public_key,
        args.new_archive_secret_key,
        args.dataset,
        args.limit,
    )


def cmd_export(cfg: Config, args: argparse.Namespace) -> int:
    """`legampi export`: a dataset re-encrypted for a researcher, on one rank."""
    from .export import run_export

    return run_export(cfg, open_db(cfg), args.dataset_id, args.recipient_pk, args.to, args.partial, args.verify)
