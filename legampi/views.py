"""The read-only commands: `status`, `count`, `track` and `report`, what an operator looks at.

They change nothing but their own output (`track start/end` keep a state file, `report` writes its HTML),
so they ask the configuration only for the sections they read (see the command table in cli.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .commands import EXIT_FAILED, EXIT_OK, open_db
from .config import Config, ConfigError
from .plots import human_bytes
from .status import COUNTED_FOLDERS, STATUSES, ArchiveStatus, Arrivals, FolderCount


def print_table(rows: Sequence[Sequence[Any]], header: Sequence[str], out: Any = None) -> None:
    """Columns padded to their widest cell, a dashed rule under the header, no trailing blanks."""
    out = out or sys.stdout
    cells = [[("" if v is None else str(v)) for v in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for n, r in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)


def human(n: int | None) -> str:
    """A byte count in binary units; "-" when it is not known."""
    return "-" if n is None else human_bytes(n)


def _unregistered(cfg: Config, registered: set[str]) -> list[str] | None:
    """Files in receiving that no manifest names; None when the configuration has no [workspaces] (noted on
    stderr: a host that only reads the database)."""
    from .workspace import scan

    try:
        receiving = cfg.workspaces.receiving
    except ConfigError as exc:
        print(f"legampi status: receiving not listed: {exc}", file=sys.stderr)
        return None
    return sorted(n for n, _ in scan(receiving) if n not in registered)


def status(cfg: Config, args: argparse.Namespace) -> int:
    """`legampi status`: datasets and files by status; needs only [database] (and [workspaces] if given).

    Sizes: "transferred" is the files as received (encrypted), "plaintext" what they decrypt to (known once
    archived; "-" before)."""
    db = open_db(cfg)
    status = ArchiveStatus.read(db, args.dataset)
    unregistered = _unregistered(cfg, {f["file_name"] for f in db.files()})
    if args.json:
        json.dump({**status.to_json(), "unregistered": unregistered}, sys.stdout, indent=2, default=str)
        print()
        return EXIT_OK
    rows = [
        [d.dataset_id, d.n_files, human(d.n_bytes), human(d.plain_bytes if d.count("available").files else None)]
        + [d.count(s).files for s in STATUSES]
        + [date or "-" for date in d.dates]
        for d in status.datasets
    ]
    print_table(
        rows,
        ["dataset", "files", "transferred", "plaintext", *STATUSES]
        + ["requested", "download start", "download end", "processing end"],
    )
    if not args.brief:
        print()
        print_table(
            [
                [f.dataset_id, f.file_id, f.file_number, f.file_name, f.status, human(f.size), human(f.plain_size)]
                + [f.archive_path or "", f.error or ""]
                for f in status.files
            ],
            ["dataset", "file", "number", "name", "status", "transferred", "plaintext", "archive", "error"],
        )
    if unregistered:
        print(f"\n{len(unregistered)} unregistered file(s) in receiving (not in any manifest, never moved):")
        for n in unregistered:
            print(f"  {n}")
    return EXIT_OK


def report(cfg: Config, args: argparse.Namespace) -> int:
    """`legampi report -o FILE`: the HTML report, written to a temporary name and renamed into place."""
    from .report import render_report
    from .report_data import collect

    html = render_report(collect(open_db(cfg), args.dataset))
    out = Path(args.output)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, out)
    print(f"report written to {out}")
    return EXIT_OK


def count(cfg: Config, args: argparse.Namespace) -> int:
    """`legampi count`: files and bytes per workspace folder (the seed's FileCount)."""
    from .workspace import scan

    counts = [
        FolderCount.of(name, folder, (st.st_size for _, st in scan(folder)))
        for name in COUNTED_FOLDERS
        if (folder := getattr(cfg.workspaces, name)) is not None
    ]
    print_table(
        [[c.workspace, c.files, human(c.bytes), c.folder] for c in counts], ["workspace", "files", "bytes", "folder"]
    )
    return EXIT_OK


def track(cfg: Config, args: argparse.Namespace) -> int:
    """`legampi track start|end|compare`: what was in receiving before a transfer and what reached the archive."""
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
        data["end_storage"] = sorted(n for n, _ in _archived_listing(cfg))
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


def _archived_listing(cfg: Config) -> Iterable[tuple[str, Any]]:
    """What is in the archive: the end_storage folder, or the S3 bucket's objects under the prefix."""
    from . import storage

    arch = storage.from_config(cfg)
    if isinstance(arch, storage.S3Archive):
        return arch.store.iter_objects()
    assert cfg.workspaces.end_storage is not None  # config requires it for the folder backend
    from .workspace import scan

    return scan(cfg.workspaces.end_storage)
