"""The chaos test's final audit: what the archive, the folders and the database must look like at the end.

"Exactly once" means, for every registered file: one row, status `available`, exactly one `available`
event in file_event and no status-changing event after it (claimed, released, failed, received,
registered), exactly one archived data file at its archive path (plus its sidecar) and nothing else in
end_storage. A file is LOST when it is neither archived intact nor still in processing; DUPLICATED
when it was recorded `available` more than once; CORRUPT when its archived copy does not decrypt with
the archive secret key to the registered md5 and sha256, or its sidecar fails `sha256sum -c`, or the
row's archive checksum is not that of the archived bytes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legampi import archive
from legampi.config import DatabaseConfig
from legampi.db import Database
from tests.conftest import BIN, Workspace

C4GH = str(BIN / "crypt4gh")
EXTS = (".c4gh", ".cip", ".gpg")
STATUS_EVENTS = ("registered", "received", "claimed", "released", "failed", "available")


@dataclass
class Audit:
    registered: int = 0
    available: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)  # not available, source still there
    other: list[str] = field(default_factory=list)  # temps, strays, sources left, stuck claims, jobs
    notes: list[str] = field(default_factory=list)  # reported, not failures

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.corrupt or self.unfinished or self.other)

    def lines(self) -> list[str]:
        out = [
            f"audit: {self.registered} registered, {self.available} available exactly once; "
            f"lost {len(self.lost)}, duplicated {len(self.duplicated)}, corrupt {len(self.corrupt)}, "
            f"unfinished {len(self.unfinished)}, other problems {len(self.other)}"
        ]
        for kind in ("lost", "duplicated", "corrupt", "unfinished", "other"):
            out += [f"  {kind.upper()}: {x}" for x in getattr(self, kind)]
        out += [f"  note: {x}" for x in self.notes]
        return out


def _hash_plain(ws: Workspace, path: Path) -> tuple[str | None, str | None, str]:
    """(md5, sha256) of what `crypt4gh decrypt --sk ARCHIVE_SECRET` makes of PATH, streamed; (None,
    None, stderr) if it fails."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as fin:
        p = subprocess.Popen(
            [C4GH, "decrypt", "--sk", str(ws.archive_sk)], stdin=fin, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert p.stdout is not None and p.stderr is not None
        for chunk in iter(lambda: p.stdout.read(1 << 20), b""):  # type: ignore[union-attr]
            md5.update(chunk)
            sha.update(chunk)
        err = p.stderr.read().decode(errors="replace")
        rc = p.wait(timeout=300)
    if rc != 0:
        return None, None, err.strip()[-300:]
    return md5.hexdigest(), sha.hexdigest(), ""


def _sha256sum_c(side: Path) -> tuple[bool, str]:
    """GNU `sha256sum -c` (or md5sum) on a sidecar, in its folder (it names the file bare); `#` lines
    are comments to it."""
    tool = "md5sum" if side.name.endswith(".md5") else "sha256sum"
    p = subprocess.run([tool, "-c", side.name], cwd=side.parent, capture_output=True, text=True, timeout=300)
    return p.returncode == 0, (p.stdout + p.stderr).strip()[-300:]


def _all_files(root: Path) -> list[Path]:
    return [Path(d) / n for d, _dirs, names in os.walk(root) for n in names]


def _check_available(ws: Workspace, name: str, want: dict[str, Any], row: dict[str, Any], a: Audit) -> set[Path]:
    """Checks of one `available` file; returns the end_storage paths it accounts for."""
    final = archive.final_path(ws.end_storage, name, EXTS)
    if Path(row["archive_path"] or "") != final:
        a.other.append(f"{name}: row archive_path {row['archive_path']!r}, expected {final}")
    if not final.is_file():
        (a.lost if not (ws.processing / name).exists() else a.corrupt).append(
            f"{name}: recorded available but {final} is missing"
        )
        return set()
    algo = row["archive_checksum_type"] or "sha256"
    side = final.with_name(final.name + "." + algo)
    mine = {final, side}
    md5, sha, err = _hash_plain(ws, final)
    if md5 is None:
        a.corrupt.append(f"{name}: {final} does not decrypt with the archive key: {err}")
    elif md5 != want["md5"] or sha != want["sha256"]:
        a.corrupt.append(f"{name}: {final} decrypts to md5 {md5} sha256 {sha}, registered md5 {want['md5']}")
    if row["md5"] != want["md5"]:
        a.corrupt.append(f"{name}: row md5 {row['md5']} is not the registered {want['md5']}")
    if not side.is_file():
        a.corrupt.append(f"{name}: no sidecar {side.name}")
    else:
        ok, text = _sha256sum_c(side)
        if not ok:
            a.corrupt.append(f"{name}: `{algo}sum -c {side.name}` fails: {text}")
    h = hashlib.new(algo)
    with open(final, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    found = h.hexdigest()
    if found != row["archive_checksum"]:
        a.corrupt.append(f"{name}: row archive_checksum {row['archive_checksum']} but the file hashes to {found}")
    return mine


def _check_events(name: str, events: list[dict[str, Any]], a: Audit) -> bool:
    """Exactly one `available` event and no status change after it. True when it holds."""
    kinds = [e["event"] for e in events]
    n = kinds.count("available")
    if n > 1:
        a.duplicated.append(f"{name}: {n} `available` events ({', '.join(str(e['job_id']) for e in events)})")
        return False
    if n == 0:
        a.other.append(f"{name}: status available but no `available` event in file_event")
        return False
    after = kinds[kinds.index("available") + 1 :]
    changed = [k for k in after if k in STATUS_EVENTS]
    if changed:
        a.duplicated.append(f"{name}: status changed after `available`: {changed}")
        return False
    return True


def run_audit(ws: Workspace, registered: dict[str, dict[str, Any]], final_job: str | None) -> Audit:
    """Audit WS against REGISTERED (name -> {md5, sha256, dataset})."""
    a = Audit(registered=len(registered))
    db = Database.connect(DatabaseConfig(url=ws.db_url))
    try:
        rows = {r["file_name"]: r for r in db.files()}
        by_file: dict[str, list[dict[str, Any]]] = {}
        for e in db.query("SELECT id, file_id, event, status, job_id, at FROM file_event ORDER BY id"):
            by_file.setdefault(e["file_id"], []).append(e)
        _audit_jobs(db, a, final_job)
        job_ids = {j["job_id"] for j in db.query("SELECT job_id FROM job")}
    finally:
        db.close()
    accounted: set[Path] = set()
    available: list[tuple[str, dict[str, Any]]] = []
    for name in sorted(registered):
        r = rows.get(name)
        src = ws.processing / name
        if r is None:
            a.lost.append(f"{name}: registered but has no row")
            continue
        if r["claimed_by"] is not None:
            a.other.append(
                f"{name}: still claimed by {r['claimed_by']} (status {r['status']})"
                + ("" if r["claimed_by"] in job_ids else "; no job has that id: the claim is held until claim_timeout")
            )
        if r["status"] != "available":
            final = archive.final_path(ws.end_storage, name, EXTS)
            copy = final.is_file()
            if copy:  # reported here, not again as an unexpected file
                accounted |= {final, final.with_name(final.name + ".sha256"), final.with_name(final.name + ".md5")}
            if src.is_file():
                a.unfinished.append(
                    f"{name}: status {r['status']} (error {r['error']}), source still in processing"
                    + (f", archived copy {final} present but not recorded" if copy else "")
                )
            elif copy:
                a.unfinished.append(f"{name}: status {r['status']}, source gone, archived copy not recorded")
            else:
                a.lost.append(f"{name}: status {r['status']}, source gone and nothing archived")
            continue
        if src.exists():
            a.other.append(f"{name}: available but its source is still in processing")
        if _check_events(name, by_file.get(r["file_id"], []), a):
            a.available += 1
        available.append((name, r))
    with ThreadPoolExecutor(max_workers=2) as pool:
        for got in pool.map(lambda nr: _check_available(ws, nr[0], registered[nr[0]], nr[1], a), available):
            accounted |= got
    extra = set(rows) - set(registered)
    if extra:
        a.other.append(f"rows of files never registered by the harness: {sorted(extra)[:10]}")
    for p in _all_files(ws.end_storage):
        if archive.TEMP_MARKER in p.name:
            a.other.append(f"temp file left in end_storage: {p}")
        elif p not in accounted:
            a.other.append(f"unexpected file in end_storage: {p}")
    unfinished = {x.split(": ", 1)[0] for x in a.unfinished}  # already reported with their source
    for folder in (ws.processing, ws.receiving):
        a.other += [
            f"file left in {folder.name}: {p}"
            for p in _all_files(folder)
            if folder != ws.processing or p.relative_to(folder).as_posix() not in unfinished
        ]
    return a


def _audit_jobs(db: Database, a: Audit, final_job: str | None) -> None:
    if db.backend == "sqlite":
        cols = {r["name"] for r in db.query("PRAGMA table_info(job)")}
    else:
        cols = {
            r["column_name"]
            for r in db.query(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = 'job'"
            )
        }
    jobs = db.query("SELECT * FROM job ORDER BY started_at")
    if "state" in cols:
        states = Counter(j["state"] for j in jobs)
        a.notes.append(f"jobs by state: {dict(states)}")
        running = [j for j in jobs if j["state"] == "running"]
        a.other += [f"job {j['job_id']} ({j['command']}) still `running` at the end" for j in running]
    else:
        open_jobs = [j for j in jobs if j["ended_at"] is None]
        a.notes.append(
            f"job table has no `state` column: {len(open_jobs)} of {len(jobs)} job(s) never ended "
            "(killed) and still look running (issue 12, item 11)"
        )
    final = [j for j in jobs if j["job_id"] == final_job]
    if not final:
        a.other.append(f"the final rerun's job {final_job} is not in the job table")
    elif final[0]["ended_at"] is None or final[0]["exit_status"] != 0:
        a.other.append(f"final job {final_job}: ended_at {final[0]['ended_at']}, exit_status {final[0]['exit_status']}")
