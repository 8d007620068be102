"""`legampi <command>`: argument parsing and dispatch only; the work lives in the other modules."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from . import config as config_mod
from .config import Config, ConfigError
from .db import Database, DatabaseError
from .parallel import LaunchError
from .status import COUNTED_FOLDERS, STATUSES, ArchiveStatus, Arrivals, FolderCount

log = logging.getLogger("legampi")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line for the site's log collector."""

    def format(self, record: logging.LogRecord) -> str:
        obj = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "rank": getattr(record, "rank", 0),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k in ("file_id", "dataset_id"):
            if hasattr(record, k):
                obj[k] = getattr(record, k)
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj)


def setup_logging(level: str, fmt: str, log_file: str | None, rank: int = 0) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    text = logging.Formatter("%(asctime)s rank %(rank)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        h.setFormatter(JsonFormatter() if fmt == "json" else text)
        h.addFilter(RankFilter(rank))
        root.addHandler(h)
    root.setLevel(getattr(logging, level.upper()))
    # The crypt4gh package logs key material at DEBUG: never let it through, whatever --log-level says.
    logging.getLogger("crypt4gh").setLevel(logging.WARNING)


# ---------------------------------------------------------------------- helpers
def _connect(cfg: Config) -> Callable[[], Database]:
    return lambda: Database.connect(cfg.database)


def _db(cfg: Config, schema: bool = True) -> Database:
    db = Database.connect(cfg.database)
    if schema:
        db.require_schema()
    return db


def _print_table(rows: Sequence[Sequence[Any]], header: Sequence[str], out: Any = None) -> None:
    out = out or sys.stdout
    cells = [[("" if v is None else str(v)) for v in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for n, r in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)


def human(n: int | None) -> str:
    if n is None:
        return "-"
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(x) < 1024 or unit == "PiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{n} B"


# ---------------------------------------------------------------------- commands
def cmd_init_db(cfg: Config, args: argparse.Namespace) -> int:
    db = _db(cfg, schema=False)
    before, after = db.init_schema(cfg.func.extensions)
    print(f"{db.label}: schema version {before or 'none'} -> {after}")
    return EXIT_OK


def cmd_register(cfg: Config, args: argparse.Namespace) -> int:
    from . import manifest, registration

    db = _db(cfg)
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
    from .monitor import run_pass
    from .workspace import array_share

    db = _db(cfg)
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


def cmd_status(cfg: Config, args: argparse.Namespace) -> int:
    from .workspace import scan

    db = _db(cfg)
    status = ArchiveStatus.read(db, args.dataset)
    registered = {f["file_name"] for f in db.files()}
    unregistered = sorted(n for n, _ in scan(cfg.workspaces.receiving) if n not in registered)
    if args.json:
        json.dump({**status.to_json(), "unregistered": unregistered}, sys.stdout, indent=2, default=str)
        print()
        return EXIT_OK
    rows = [
        [d.dataset_id, d.n_files, human(d.n_bytes)]
        + [d.count(s).files for s in STATUSES]
        + [date or "-" for date in d.dates]
        for d in status.datasets
    ]
    _print_table(
        rows, ["dataset", "files", "bytes", *STATUSES, "requested", "download start", "download end", "processing end"]
    )
    if not args.brief:
        print()
        _print_table(
            [
                [f.dataset_id, f.file_id, f.file_name, f.status, human(f.size), f.archive_path or "", f.error or ""]
                for f in status.files
            ],
            ["dataset", "file", "name", "status", "size", "archive", "error"],
        )
    if unregistered:
        print(f"\n{len(unregistered)} unregistered file(s) in receiving (not in any manifest, never moved):")
        for n in unregistered:
            print(f"  {n}")
    return EXIT_OK


def _mpi_team(args: argparse.Namespace) -> Any:
    from .parallel import Team

    team = Team()
    team.check_launch()
    setup_logging(args.log_level, args.log_format, args.log_file, team.rank)
    return team


def cmd_process(cfg: Config, args: argparse.Namespace) -> int:
    from .ingest import run_process
    from .parallel import StopFlag
    from .workspace import array_share

    stop = StopFlag()
    stop.install()  # before MPI starts: an early USR1/TERM must not kill the rank
    team = _mpi_team(args)
    branches, branch = array_share(args.branches, args.branch)
    return run_process(
        cfg,
        team,
        _connect(cfg),
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
    from .recovery import recover

    rep = recover(_db(cfg), cfg)
    for line in rep.lines():
        print(line)
    return EXIT_FAILED if rep.problems else EXIT_OK


def cmd_process_file(cfg: Config, args: argparse.Namespace) -> int:
    from .stream import FileTask, PipelineContext, process_file

    path = Path(args.path).absolute()
    try:
        rel = path.relative_to(cfg.workspaces.processing).as_posix()
    except ValueError:
        raise ConfigError(cfg.path, "workspaces", "processing", f"{path} is not inside the processing folder") from None
    md5, sha = args.md5, args.sha256
    file_id = rel
    if md5 is None and sha is None:
        rows = _db(cfg).files(names=[rel])
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
    db = _db(cfg)
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


def cmd_log_event(cfg: Config, args: argparse.Namespace) -> int:
    from .db import Event

    db = _db(cfg)
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
    from .verify import run_verify

    return run_verify(cfg, _mpi_team(args), _connect(cfg), args.dataset, args.decrypt)


def cmd_report(cfg: Config, args: argparse.Namespace) -> int:
    from .report import render_report
    from .report_data import collect

    html = render_report(collect(_db(cfg), args.dataset))
    out = Path(args.output)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, out)
    print(f"report written to {out}")
    return EXIT_OK


def cmd_demo(cfg: Config | None, args: argparse.Namespace) -> int:
    from .demo import run

    return run(Path(args.folder) if args.folder else None, args.files, args.ranks)


def cmd_testdata(cfg: Config, args: argparse.Namespace) -> int:
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


def cmd_count(cfg: Config, args: argparse.Namespace) -> int:
    from .workspace import scan

    counts = [
        FolderCount.of(name, folder, (st.st_size for _, st in scan(folder)))
        for name in COUNTED_FOLDERS
        if (folder := getattr(cfg.workspaces, name)) is not None
    ]
    _print_table(
        [[c.workspace, c.files, human(c.bytes), c.folder] for c in counts], ["workspace", "files", "bytes", "folder"]
    )
    return EXIT_OK


def cmd_track(cfg: Config, args: argparse.Namespace) -> int:
    from .archive import archive_name
    from .workspace import scan

    state = (
        Path(args.state)
        if args.state
        else (cfg.workspaces.metadata or cfg.workspaces.processing) / "legampi-track.json"
    )
    data = json.loads(state.read_text(encoding="utf-8")) if state.exists() else {}
    if args.action == "start":
        data = {"receiving": sorted(n for n, _ in scan(cfg.workspaces.receiving))}
    elif args.action == "end":
        data["end_storage"] = sorted(n for n, _ in scan(cfg.workspaces.end_storage))
    if args.action in ("start", "end"):
        state.write_text(json.dumps(data, indent=1), encoding="utf-8")
        key = "receiving" if args.action == "start" else "end_storage"
        print(f"recorded {len(data[key])} file(s) of {key} in {state}")
        return EXIT_OK
    if "receiving" not in data or "end_storage" not in data:
        print(
            f"{state}: run `legampi track start` before the transfer and `track end` after processing", file=sys.stderr
        )
        return EXIT_FAILED
    arrivals = Arrivals.compare(data["receiving"], data["end_storage"], lambda n: archive_name(n, cfg.func.extensions))
    print(f"{arrivals.arrived} of {len(arrivals.received)} file(s) arrived in the archive")
    for n in arrivals.lost:
        print(f"  LOST {n}")
    return EXIT_FAILED if arrivals.lost else EXIT_OK


def cmd_rekey(cfg: Config, args: argparse.Namespace) -> int:
    from .rekey_job import run_rekey

    return run_rekey(
        cfg,
        _mpi_team(args),
        _connect(cfg),
        args.new_archive_public_key,
        args.new_archive_secret_key,
        args.dataset,
        args.limit,
    )


def cmd_export(cfg: Config, args: argparse.Namespace) -> int:
    from .export import run_export

    return run_export(cfg, _db(cfg), args.dataset_id, args.recipient_pk, args.to, args.partial, args.verify)


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="legampi",
        description="Move encrypted genomic datasets from a transfer end-point into a Crypt4GH archive: "
        "notice finished transfers, decrypt as a stream, verify checksums, re-encrypt for the "
        "archive key, move atomically, record everything. Run under mpiexec/srun for many ranks.",
    )
    p.add_argument("-c", "--config", help=f"configuration INI file (default: ${config_mod.ENV_CONFIG})")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one JSON object per line for a log collector",
    )
    p.add_argument("--log-file", help="also append log lines to this file")
    p.add_argument("--version", action="version", version=f"legampi {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, fn: Callable[..., int], help_: str, needs_config: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=fn, needs_config=needs_config)
        return sp

    add("init-db", cmd_init_db, "create or upgrade the tracking database schema (idempotent)")

    sp = add("register", cmd_register, "register a dataset manifest (tab or EGA JSON) in one transaction")
    sp.add_argument("manifest", help="tab manifest (name<TAB>md5[<TAB>size[<TAB>sha256]]) or EGA JSON file")
    sp.add_argument("--dataset", help="dataset id (default: from the JSON, or the manifest's base name)")
    sp.add_argument(
        "--amend",
        action="store_true",
        help="correct the expected checksums and sizes of files not yet available (old values kept in the "
        "event log; failed files whose checksum changed are retried by the next process)",
    )

    sp = add("fetch-metadata", cmd_fetch_metadata, "download a dataset's file list from the EGA API into metadata")
    sp.add_argument("dataset_id")
    sp.add_argument("--register", action="store_true", help="also register it")

    def share_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--branches",
            type=int,
            help="split the sorted listing into N shares (seed formula "
            "branch + branches*n); default: the Slurm array task's share, else everything",
        )
        sp.add_argument("--branch", type=int, help="which share, 1..N")

    sp = add("monitor", cmd_monitor, "one transfer-monitor pass: track receiving, move finished files to processing")
    share_opts(sp)

    sp = add("status", cmd_status, "datasets and files by status, the four dataset timestamps")
    sp.add_argument("--dataset")
    sp.add_argument("--json", action="store_true", help='print {"datasets": [...], "files": [...]}')
    sp.add_argument("--brief", action="store_true", help="datasets only, no per-file table")

    sp = add(
        "process",
        cmd_process,
        "the batch job: archive every registered file in processing "
        "(run under mpiexec/srun; rank 0 coordinates, the others stream files)",
    )
    sp.add_argument(
        "--schedule",
        choices=["dynamic", "static"],
        default="dynamic",
        help="dynamic: largest file first to whichever rank is free (default); static: the seed's "
        "round-robin, file number branch + branches*n per rank",
    )
    share_opts(sp)
    sp.add_argument("--retry-failed", action="store_true", help="also take files recorded as failed")
    sp.add_argument("--dataset", help="only this dataset")
    sp.add_argument("--limit", type=int, help="claim at most N files")
    sp.add_argument("--no-recover", action="store_true", help="skip the recovery step before processing")
    sp.add_argument(
        "--progress-interval",
        type=float,
        default=60.0,
        help="seconds between progress log lines when not on a terminal (default 60)",
    )

    add(
        "recover",
        cmd_recover,
        "release dead jobs' claims, remove temporary files, record verified archived "
        "copies that have no row, remove processed sources",
    )

    sp = add(
        "process-file",
        cmd_process_file,
        "archive one file in processing, no MPI, no database update; prints the result",
    )
    sp.add_argument("path")
    sp.add_argument("--md5", help="expected plaintext md5 (default: from the database)")
    sp.add_argument("--sha256", help="expected plaintext sha256 (default: from the database)")

    sp = add("checksum", cmd_checksum, "hash a file, or check it against its sidecar", needs_config=False)
    sp.add_argument("action", choices=["hash", "check"])
    sp.add_argument("path")
    sp.add_argument("--algo", choices=["sha256", "md5"], default="sha256")

    sp = add("update", cmd_update, "set a file's status by hand (recorded as an event)")
    sp.add_argument("file_id")
    sp.add_argument("status", choices=list(STATUSES))
    sp.add_argument("--reason", help="why (kept in the event; the error text when status is failed)")

    sp = add("log-event", cmd_log_event, "stamp one of a dataset's dates now (the seed's datasetlogger)")
    sp.add_argument("dataset_id")
    sp.add_argument(
        "event",
        choices=[
            "requested",
            "download_start",
            "download_end",
            "processing_end",
            "date_requested",
            "date_download_start",
            "date_download_end",
            "date_processing_end",
        ],
    )

    sp = add(
        "verify-archive",
        cmd_verify_archive,
        "fixity audit: hash every archived file again and compare "
        "with the database and sidecars (run under mpiexec/srun like process)",
    )
    sp.add_argument("--dataset")
    sp.add_argument(
        "--decrypt",
        action="store_true",
        help="also decrypt with [crypto] archive_secret_key and compare plaintext md5/sha256",
    )

    sp = add("report", cmd_report, "write a self-contained HTML report (datasets, timeline, throughput, failures)")
    sp.add_argument("-o", "--output", required=True, help="the HTML file to write")
    sp.add_argument("--dataset")

    sp = add(
        "demo",
        cmd_demo,
        "run the whole pipeline on throwaway keys and data in a new folder (SQLite, "
        "local folders, the packaged mpiexec)",
        needs_config=False,
    )
    sp.add_argument("folder", nargs="?", help="an empty or new folder (default: a new temporary folder)")
    sp.add_argument("--files", type=int, default=36)
    sp.add_argument("--ranks", type=int, default=3, help="MPI ranks for process (default 3: 2 workers)")

    sp = add(
        "testdata",
        cmd_testdata,
        "write encrypted test files into receiving and their manifests (tab and "
        "EGA JSON) into metadata, with real checksums",
    )
    sp.add_argument("--dataset", default="EGAD00000000001")
    sp.add_argument("--files", type=int, default=10)
    sp.add_argument("--size", help="every file this size, e.g. 10MB (default 1MB)")
    sp.add_argument("--sizes", help="lognormal:MEDIAN,SIGMA, e.g. lognormal:20MB,1.5")
    sp.add_argument("--format", choices=["c4gh", "cip", "gpg", "plain"], default="c4gh")
    sp.add_argument("--seed", type=int, default=1)

    add("count", cmd_count, "files and bytes per workspace (the seed's FileCount)")

    sp = add(
        "track",
        cmd_track,
        "record receiving before a transfer, the archive after, and list what was lost (the seed's TrackItems)",
    )
    sp.add_argument("action", choices=["start", "end", "compare"])
    sp.add_argument("--state", help="where to keep the lists (default: metadata/legampi-track.json)")

    sp = add(
        "rekey",
        cmd_rekey,
        "rotate the archive key: re-encrypt every archived file's header for a new "
        "public key, payload unchanged (run under mpiexec/srun like process; resumes after interruption)",
    )
    sp.add_argument("--new-archive-public-key", required=True, metavar="PATH")
    sp.add_argument(
        "--new-archive-secret-key",
        metavar="PATH",
        help="also check each rotated file decrypts with it (passphrase from $LEGAMPI_NEW_ARCHIVE_PASSPHRASE)",
    )
    sp.add_argument("--dataset", help="only this dataset")
    sp.add_argument("--limit", type=int, help="rotate at most N files this run")

    sp = add(
        "export",
        cmd_export,
        "export a dataset for a researcher: archived files with their header "
        "re-encrypted for the researcher's public key, a sha256 manifest and a file list",
    )
    sp.add_argument("dataset_id")
    sp.add_argument("--recipient-pk", required=True, metavar="PATH", help="the researcher's Crypt4GH public key")
    sp.add_argument("--to", required=True, metavar="DIR", help="export folder (created; files are never overwritten)")
    sp.add_argument("--partial", action="store_true", help="export the archived files even if some are not yet")
    sp.add_argument(
        "--verify", action="store_true", help="also decrypt each payload in memory and compare plaintext md5/sha256"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format, args.log_file)
    team_cmd = args.command in ("process", "verify-archive", "rekey")
    try:
        cfg = config_mod.load(args.config) if args.needs_config else None
        if not team_cmd and _launched_by_mpi():
            return _rank0_only(cfg, args)
        code = args.func(cfg, args)
    except ConfigError as exc:
        print(f"legampi: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LaunchError as exc:
        print(f"legampi {args.command}: refusing to start: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (DatabaseError, ValueError, OSError) as exc:
        if team_cmd and _world_size() > 1:
            _crash(exc)
        print(f"legampi {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED if not isinstance(exc, DatabaseError) else EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        if team_cmd and _world_size() > 1 and not isinstance(exc, SystemExit):
            _crash(exc)
        raise
    return code


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
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
