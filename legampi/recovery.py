"""Bring the database and the folders back in line after any crash; safe any time, also beside live jobs.

Recovery only ever finishes what legampi itself started. It removes legampi's own temporary files when
no live job can still be writing them, records an archived copy that has no row only when the copy's
provenance proves it was written for that row (see `provenance`), and never deletes or adopts anything
else: a foreign file at an archive path is reported, its row's source stays where it is.

With an S3 archive the same holds for objects (legampi.storage): an object without its row is adopted
only with the proof `s3store.examine` checks (its provenance metadata and the server's checksum), and the
incomplete multipart uploads of dead jobs (invisible, but stored and billed) are aborted.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from . import archive, checksum, provenance, storage
from .config import Config
from .db import Database
from .formats import IngestError
from .stream import FileResult
from .workspace import scan

log = logging.getLogger("legampi.recovery")

HEARTBEAT_INTERVAL = 30  # seconds between a job's heartbeats (ingest.Recorder, rekey_job.RekeyRecorder)
ROW_COLUMNS = ("file_id", "dataset_id", "file_name", "status", "md5", "sha256", "claimed_by")
# An incomplete S3 upload younger than this is left alone whatever the claims say: it may be a process
# without a claim (process-file), and the server's clock (which stamps it) may run ahead of ours.
UPLOAD_MARGIN = timedelta(seconds=10)


def pid_alive(pid: int) -> bool:
    """Is process PID of this host still running? A zombie (exited, not yet reaped) counts as dead."""
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back to signal 0
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


@dataclass
class RecoveryReport:
    released: list[str] = field(default_factory=list)
    recorded: list[str] = field(default_factory=list)
    temp_removed: list[str] = field(default_factory=list)
    sources_removed: list[str] = field(default_factory=list)
    jobs_died: list[str] = field(default_factory=list)
    uploads_aborted: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    problem_fields: list[dict[str, Any]] = field(default_factory=list)  # per problem: its logs.FIELDS
    s3: bool = False  # the archive is an S3 bucket: say how many incomplete uploads were aborted

    def problem(self, text: str, **fields: Any) -> None:
        """One problem: its text for the report, its structured fields (file_id, file_name, kind) for logs."""
        self.problems.append(text)
        self.problem_fields.append({k: v for k, v in fields.items() if v is not None})

    def lines(self) -> list[str]:
        out = [
            f"released {len(self.released)} stale claim(s)",
            f"recorded {len(self.recorded)} archived copy(ies) that had no row (provenance checked)",
            f"removed {len(self.temp_removed)} temporary file(s)",
            f"removed {len(self.sources_removed)} processed source(s)",
            f"marked {len(self.jobs_died)} job(s) whose processes are gone as died",
        ]
        if self.s3 or self.uploads_aborted:
            out.append(f"aborted {len(self.uploads_aborted)} incomplete S3 upload(s) of dead jobs")
        out += [f"  released: {x}" for x in self.released] + [f"  recorded: {x}" for x in self.recorded]
        out += [f"  temp removed: {x}" for x in self.temp_removed]
        out += [f"  source removed: {x}" for x in self.sources_removed]
        out += [f"  job died: {x}" for x in self.jobs_died]
        out += [f"  upload aborted: {x}" for x in self.uploads_aborted]
        out += [f"  PROBLEM: {x}" for x in self.problems]
        return out


def recover(db: Database, cfg: Config, job_id: str | None = None) -> RecoveryReport:
    """1. jobs whose processes are gone are marked died and their claims released;
    2. temporary files in end_storage (incomplete uploads to S3) are removed unless a live job may
       still be writing them;
    3. an archived copy without its row (a crash between link and commit) is recorded, with proof only;
    4. sources of `available` files still in processing are removed (unless keep_processed).
    One row's problem is reported and never stops the others."""
    rep = RecoveryReport()
    ws = cfg.workspaces
    host = socket.gethostname()
    arch = storage.from_config(cfg)
    rep.s3 = arch.backend == "s3"
    # List temp files (S3: incomplete uploads) BEFORE reading the database: a live job commits its claim
    # before it creates a temp file or starts an upload, so every one seen here has its claim in the
    # snapshot below and is not mistaken for debris.
    started = datetime.now(timezone.utc)
    uploads = _list_uploads(arch, rep)
    temps = [] if rep.s3 else [rel for rel, _st in scan(archive_root(cfg)) if archive.is_temp_name(rel)]
    cutoff, grace = db.cutoff(cfg.func.claim_timeout), db.cutoff(2 * HEARTBEAT_INTERVAL)
    asked: dict[str, bool | None] = {}

    def slurm_gone(job_id: str) -> bool | None:
        if job_id not in asked:
            asked[job_id] = slurm_job_gone(job_id)
        return asked[job_id]

    def dead(j: dict[str, Any]) -> bool:
        return job_is_dead(j, host, pid_alive, cutoff, slurm_gone, grace)

    live_jobs = []
    for j in db.running_jobs():
        if dead(j):
            rep.jobs_died += db.mark_jobs_died([j["job_id"]])
        else:
            live_jobs.append(j)
    stale = db.stale_claims(cfg.func.claim_timeout, dead)
    rep.released += db.release_dead_archived(cfg.func.claim_timeout, dead)  # rekey/verify-archive: stay available
    stale_ids = {r["file_id"] for r in stale}
    # Only rows not yet `available` matter (plus the processing listing for step 4), so recovery costs
    # what is in flight, not the size of the archive.
    rows = db.unfinished_files(ROW_COLUMNS)
    live = {f["file_id"] for f in rows if f["status"] == "processing" and f["file_id"] not in stale_ids}
    finals = _archive_names(rows, cfg, rep)
    rekey_running = any(j["command"] == "rekey" for j in live_jobs)
    _remove_temps(temps, finals, live, rekey_running, cfg, rep)
    _abort_uploads(arch, uploads, finals, live, rekey_running, started - UPLOAD_MARGIN, rep)

    results = [r for f in rows if f["file_id"] not in live and (r := _adoptable(f, finals, cfg, arch, host, rep))]
    adopted = _record(db, results, stale_ids, job_id or f"recover-{host}-{os.getpid()}", cfg, rep)
    release = [r["file_id"] for r in stale if r["file_id"] not in adopted]
    if release:
        db.release(release, None, "claim of a dead job")
        rep.released += [f"{r['file_name']} (job {r['claimed_by']})" for r in stale if r["file_id"] in release]

    if not ws.keep_processed:
        sizes = {rel: st.st_size for rel, st in scan(ws.processing)}
        for f in db.files(names=list(sizes), status="available", columns=("file_id", "file_name", "size")):
            if f["file_id"] in adopted:
                continue
            if f["size"] is not None and int(f["size"]) != sizes[f["file_name"]]:
                rep.problem(
                    f"{ws.processing / f['file_name']}: {sizes[f['file_name']]} bytes, but file {f['file_id']} was "
                    f"archived from {f['size']} bytes: not the archived file, left alone",
                    file_id=f["file_id"],
                    file_name=f["file_name"],
                    bytes=sizes[f["file_name"]],
                )
                continue
            _remove_source(cfg, f["file_name"], rep)
    log_problems(rep, job_id)
    return rep


def log_problems(rep: RecoveryReport, job_id: str | None = None) -> None:
    """One error line per problem, with its structured fields (logs.FIELDS) for JSON logs."""
    for line, extra in zip(rep.problems, rep.problem_fields, strict=True):
        log.error("recover: %s", line, extra={"job": job_id, **extra} if job_id else extra)


def job_is_dead(
    job: dict[str, Any],
    this_host: str,
    alive: Callable[[int], bool],
    cutoff: str,
    slurm_gone: Callable[[str], bool | None] | None = None,
    grace: str = "",
) -> bool:
    """A job that has not ended is dead when its pid is gone (same host), when Slurm no longer knows it
    and it has missed two heartbeats (any host), or when its heartbeat stopped for claim_timeout."""
    if job.get("host") == this_host and not alive(int(job["pid"])):
        return True
    beat = job.get("heartbeat_at") or ""
    job_id = str(job.get("job_id") or job.get("claimed_by"))  # a job row, or a claim joined with its job
    if slurm_gone is not None and beat < grace and slurm_gone(job_id):
        return True
    return beat < cutoff


_SLURM_ID = re.compile(r"^slurm-(\d+(?:_\d+)?)-\d+$")


def slurm_job_gone(job_id: str) -> bool | None:
    """Does Slurm say this job (workspace.make_job_id's slurm-ID-TIME) is no longer queued or running?
    None when it cannot tell (not a Slurm job, no squeue, squeue failing): then only the heartbeat counts."""
    m = _SLURM_ID.match(job_id)
    if m is None or shutil.which("squeue") is None:
        return None
    try:
        p = subprocess.run(
            ["squeue", "-h", "-o", "%T", "-j", m.group(1)], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("cannot ask Slurm about job %s: %s", job_id, exc)
        return None
    if p.returncode == 0:
        return not p.stdout.strip()  # known jobs print a state (PENDING, RUNNING, COMPLETING...)
    return "invalid job id" in p.stderr.lower() or None


def _archive_names(rows: list[dict[str, Any]], cfg: Config, rep: RecoveryReport) -> dict[str, str]:
    """file_id -> archive path relative to end_storage; a name that cannot be archived is reported."""
    out = {}
    for f in rows:
        try:
            out[f["file_id"]] = archive.archive_name(f["file_name"], cfg.func.extensions)
        except IngestError as exc:
            rep.problem(
                f"file {f['file_id']}: {exc.message}", file_id=f["file_id"], file_name=f["file_name"], kind=exc.kind
            )
    return out


def _remove_temps(
    temps: list[str], finals: dict[str, str], live: set[str], rekey_running: bool, cfg: Config, rep: RecoveryReport
) -> None:
    """Temps of a live claim stay; so do temps next to archived files while a rekey job is alive."""
    owner_of = {final: fid for fid, final in finals.items()}
    for rel in temps:
        final = (PurePosixPath(rel).parent / archive.final_name_of_temp(rel)).as_posix()
        for algo in checksum.ALGOS:  # a sidecar's temp belongs to the archived file's owner too
            final = final.removesuffix("." + algo) if final.endswith(".c4gh." + algo) else final
        owner = owner_of.get(final)
        if owner in live or (owner is None and rekey_running):
            continue
        path = archive_root(cfg) / rel
        try:
            path.unlink(missing_ok=True)
            rep.temp_removed.append(rel)
        except OSError as exc:
            rep.problem(f"cannot remove temporary file {path}: {exc}", kind="io")


def archive_root(cfg: Config) -> Path:
    """end_storage, on the paths that only the folder backend takes (config requires it there)."""
    assert cfg.workspaces.end_storage is not None, "end_storage is required with [archive] backend = posix"
    return cfg.workspaces.end_storage


def _list_uploads(arch: Any, rep: RecoveryReport) -> list[Any]:
    """Incomplete uploads under the archive's prefix (S3 only); a server that cannot list is reported."""
    if arch.backend != "s3":
        return []
    try:
        return list(arch.store.list_uploads())
    except Exception as exc:  # noqa: BLE001 - reported; the rest of recovery still runs
        err = exc if isinstance(exc, IngestError) else arch.store.error("s3://", "listing incomplete uploads", exc)
        rep.problem(f"cannot list incomplete S3 uploads: {err.message}", kind=err.kind)
        return []


def _abort_uploads(
    arch: Any,
    uploads: list[Any],
    finals: dict[str, str],
    live: set[str],
    rekey_running: bool,
    before: datetime,
    rep: RecoveryReport,
) -> None:
    """Abort legampi's uploads whose file no live job holds; while a rekey job is alive, uploads to the
    keys of archived files (not in flight for `process`) are its own and stay (as its temps do)."""
    if not uploads:
        return
    from .s3store import select_orphans

    live_rels = {rel for fid, rel in finals.items() if fid in live}
    if rekey_running:
        owned = set(finals.values())
        live_rels |= {u.rel for u in uploads if u.rel is not None and u.rel not in owned}
    for u in select_orphans(uploads, live_rels, before):
        try:
            arch.store.abort_upload(u)
            rep.uploads_aborted.append(f"{arch.location(u.rel)} (upload {u.upload_id}, started {u.initiated})")
        except IngestError as exc:
            rep.problem(
                f"cannot abort incomplete upload {u.upload_id} to {arch.location(u.rel)}: {exc.message}", kind=exc.kind
            )


def _examine(f: dict[str, Any], rel: str, cfg: Config, arch: Any, rep: RecoveryReport) -> tuple[Any, int] | None:
    """(verdict, size) of what stands at REL's place in the archive; None when nothing does."""
    if arch.backend == "s3":
        from .s3store import examine

        info = arch.store.head(rel)
        return None if info is None else (examine(arch.store, rel, f, cfg.crypto.archive_checksum), info.size)
    final = archive_root(cfg) / rel
    if not os.path.lexists(final):
        _drop_orphan_sidecars(final, f["file_id"], rep)
        return None
    verdict = provenance.examine(final, f)
    return verdict, final.stat().st_size if verdict.adopt else 0


def _adoptable(
    f: dict[str, Any], finals: dict[str, str], cfg: Config, arch: Any, host: str, rep: RecoveryReport
) -> FileResult | None:
    """The row's archived copy as a result to record when provenance proves it; else None (reported)."""
    rel = finals.get(f["file_id"])
    if rel is None:
        return None
    where = arch.location(rel)
    try:
        found = _examine(f, rel, cfg, arch, rep)
    except (OSError, IngestError) as exc:
        why = exc.message if isinstance(exc, IngestError) else str(exc)
        kind = exc.kind if isinstance(exc, IngestError) else "io"
        text = f"{f['file_name']} (file {f['file_id']}): cannot examine {where}: {why}"
        rep.problem(text, file_id=f["file_id"], file_name=f["file_name"], kind=kind)
        return None
    if found is None:
        return None
    verdict, size = found
    if not verdict.adopt:
        rep.problem(
            f"archive_conflict: {f['file_name']} (file {f['file_id']}): not adopted: {verdict.reason}; "
            f"the source {cfg.workspaces.processing / f['file_name']} is kept; move the file at the "
            "archive path away (or prove it) and rerun",
            file_id=f["file_id"],
            file_name=f["file_name"],
            kind="archive_conflict",
        )
        return None
    prov = verdict.record or {}
    return FileResult(
        file_id=f["file_id"],
        rel=f["file_name"],
        status="available",
        archive_path=where,
        md5=prov.get("md5"),
        sha256=prov.get("sha256"),
        archive_checksum=verdict.digest,
        archive_checksum_type=verdict.algo,
        archive_key=prov.get("archive_key"),
        plain_size=prov.get("plain_size"),
        archive_size=size,
        host=host,
    )


def _drop_orphan_sidecars(final: Path, file_id: str, rep: RecoveryReport) -> None:
    """A sidecar of this row's own attempt that never linked its archive file (crash in between)."""
    for algo in checksum.ALGOS:
        side = checksum.sidecar_path(final, algo)
        if not os.path.isfile(side):
            continue
        try:
            prov = checksum.read_sidecar(side, algo)[2]
        except ValueError:
            continue  # not ours: the worker reports it as a conflict when it gets there
        if prov is not None and prov.get("file_id") == file_id and not os.path.lexists(final):
            side.unlink()
            archive.fsync_dir(side.parent)
            rep.temp_removed.append(f"{side} (sidecar of an attempt that never finished)")


def _record(
    db: Database, results: list[FileResult], stale_ids: set[str], rid: str, cfg: Config, rep: RecoveryReport
) -> set[str]:
    """Record adopted copies under recovery's own claim (record_results checks ownership)."""
    if not results:
        return set()
    ids = [r.file_id for r in results]
    with db.transaction():  # all or nothing: a recovery killed here leaves no claim behind
        db.release(list(stale_ids & set(ids)), None, "recovering archived copy")
        got = set(db.claim(ids, rid, retry_failed=True))
        recorded = db.record_results([r for r in results if r.file_id in got], rid)
    for r in recorded:
        rep.recorded.append(f"{r.rel} -> {r.archive_path}")
        _remove_source(cfg, r.rel, rep)
    return {r.file_id for r in recorded}


def _remove_source(cfg: Config, rel: str, rep: RecoveryReport) -> None:
    if cfg.workspaces.keep_processed:
        return
    src = cfg.workspaces.processing / rel
    try:
        if src.is_file() and not src.is_symlink():
            archive.remove_source(src)
            rep.sources_removed.append(rel)
    except OSError as exc:
        rep.problem(f"cannot remove processed source {src}: {exc}", file_name=rel, kind="io")
