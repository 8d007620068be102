"""Fixity audit of the archive: hash every `available` file again and compare with what was recorded.

One read per file: the archived bytes are hashed as they stream past and, with ``--decrypt`` (needs the
archive secret key), decrypted in the same pass so the plaintext md5/sha256 are compared with the manifest.
The work function is plain Python; `parallel.execute` spreads it over the ranks like `process`. Like
`process`, the audit is a job that claims each file before reading it, in batches as the ranks need them
(legampi.archived_claims): a file held by another live job (a `rekey` rotating it) is never judged
mid-rotation (tried again at the end; skipped and reported if held to the end), and one another audit
running alongside holds is that audit's part.

An object in an S3 archive (`archive_path` s3://bucket/key) is read the same way, once, through the
process's store (legampi.storage): its bytes are compared with the recorded checksum and with the sha256
the server stored when it accepted them, and its provenance metadata stands in for the sidecar.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from . import archive, checksum, storage
from .archived_claims import SKIPPED_EXIT, ArchivedClaims, ClaimBook, free_dead_claims, skipped_lines, start_job
from .formats import IngestError
from .parallel import Executor, InProcess, Job, NotReady, execute
from .progress import Progress
from .workspace import make_job_id, scan

log = logging.getLogger("legampi.verify")


@dataclass
class AuditTask:
    file_id: str
    dataset_id: str
    archive_path: str
    archive_checksum: str | None
    archive_checksum_type: str | None
    md5: str | None
    sha256: str | None
    size: int = 0
    archive_key: str | None = None
    decrypt: bool = True  # False: archived for another key than the configured one, bytes checked only


@dataclass
class AuditResult:
    file_id: str
    dataset_id: str
    result: str  # 'ok' | 'mismatch' | 'missing' | 'unexpected'
    details: str
    bytes_read: int = 0


def audit_file(task: AuditTask, archive_secret_key: bytes | None = None, store: Any = None) -> AuditResult:
    """Check one archived file against its recorded checksum, its sidecar and (optionally) the manifest.
    An s3:// location is read through STORE (default: this process's store for the configured [archive])."""
    archive_secret_key = archive_secret_key if task.decrypt else None
    if storage.is_s3(task.archive_path):
        from .s3read import audit_object

        return AuditResult(task.file_id, task.dataset_id, *audit_object(task, archive_secret_key, store))
    path = Path(task.archive_path)
    algo = task.archive_checksum_type or "sha256"
    if not path.is_file():
        return AuditResult(task.file_id, task.dataset_id, "missing", f"{path}: archived file is missing")
    problems = []
    h = hashlib.new(algo)
    with open(path, "rb") as raw:
        reader = checksum.HashingReader(raw, h)
        if archive_secret_key is not None:
            from .formats.crypt4gh import decrypt_stream

            md5, sha = hashlib.md5(), hashlib.sha256()
            try:
                for plain in decrypt_stream(reader, archive_secret_key, label=str(path)):
                    md5.update(plain)
                    sha.update(plain)
            except IngestError as exc:
                problems.append(f"does not decrypt with the archive key ({exc.kind}: {exc.message})")
            else:
                if task.md5 and md5.hexdigest() != task.md5:
                    problems.append(f"plaintext md5 {md5.hexdigest()} != manifest {task.md5}")
                if task.sha256 and sha.hexdigest() != task.sha256:
                    problems.append(f"plaintext sha256 {sha.hexdigest()} != recorded {task.sha256}")
        rest = bytearray(4 << 20)  # hash whatever decryption did not read (or all of it)
        while reader.readinto(rest):
            pass
    found = h.hexdigest()
    if task.archive_checksum and found != task.archive_checksum:
        problems.append(f"archive {algo} {found} != recorded {task.archive_checksum}")
    marker = path.with_name(path.name + archive.PENDING_SUFFIX)
    if marker.exists():
        problems.append(f"a key rotation is pending ({marker.name}): rerun `legampi rekey` to finish it")
    side = checksum.sidecar_path(path, algo)
    if not side.is_file():
        problems.append(f"sidecar {side.name} is missing")
    else:
        try:
            _ok, expected, _ = checksum.check_sidecar(side)
        except (ValueError, OSError) as exc:
            problems.append(f"sidecar unreadable: {exc}")
        else:
            if expected != found:
                problems.append(f"sidecar says {expected}, file is {found}")
    if problems:
        return AuditResult(task.file_id, task.dataset_id, "mismatch", f"{path}: " + "; ".join(problems), reader.count)
    return AuditResult(
        task.file_id,
        task.dataset_id,
        "ok",
        f"{path}: {algo} {found}" + (", plaintext checksums match" if archive_secret_key is not None else ""),
        reader.count,
    )


def unexpected_files(
    end_storage: Path | None, rows: list[dict[str, Any]], extensions: tuple[str, ...], arch: Any = None
) -> list[str]:
    """Files in end_storage (objects in the S3 archive ARCH, default the configured [archive]) that no
    `available` row accounts for (nor its sidecar), as archive names. A file being archived right now
    (its row `processing`) and legampi's own temp names (a live job's, or debris `recover` removes) are
    not unexpected."""
    if arch is None and (conf := storage.configured()) is not None and conf.backend == "s3":
        arch = storage.open_archive(conf, None)
    known = set()
    for r in rows:
        if r["status"] not in ("available", "processing"):
            continue
        final = archive.archive_name(r["file_name"], extensions)
        # a rotation's pending marker belongs to its file (`rekey` clears it), not an unexpected file
        known |= {final, f"{final}.sha256", f"{final}.md5", final + archive.PENDING_SUFFIX}
    if arch is not None and arch.backend == "s3":
        listing = arch.store.iter_objects()
    elif end_storage is not None:
        listing = scan(end_storage)
    else:
        raise ValueError("[workspaces] end_storage is required with the folder archive")
    return sorted(rel for rel, _ in listing if rel not in known and not archive.is_temp_name(rel))


def run_verify(
    cfg: Any, team: Any, connect: Any, dataset: str | None = None, decrypt: bool = False, out: Any = None
) -> int:
    """`legampi verify-archive` on every rank (TEAM None: in this process); exit 1 if any file is
    missing, altered or unexpected, 2 if the audit could not start, 5 if files were skipped (held by
    other live jobs) or, with --decrypt, not decrypted (archived for another key)."""
    job: Job[Any] = Job(
        open=lambda: _open_database(connect),
        load=lambda _rank: load_auditor(cfg, decrypt),
        coordinate=lambda db, ex: verify_archive(db, ex, cfg, dataset, decrypt, out),
    )
    return execute(job, team, log)


def _open_database(connect: Any) -> Any:
    try:
        db = connect()
        db.require_schema()
    except Exception as exc:  # noqa: BLE001 - reported to every rank as text, then exit 2
        raise NotReady(str(exc)) from None
    return db


def load_auditor(cfg: Any, decrypt: bool = False) -> Callable[[AuditTask], AuditResult]:
    """A working rank's work function: audit one file (with --decrypt, with the archive secret key)."""
    return partial(audit_file, archive_secret_key=_archive_key(cfg) if decrypt else None)


def _archive_key(cfg: Any) -> bytes:
    """The archive secret key, for --decrypt; a missing or unreadable key refuses the audit."""
    from .keys import load_secret_key

    if cfg.crypto.archive_secret_key is None:
        raise NotReady("--decrypt needs [crypto] archive_secret_key")
    try:
        pw = cfg.crypto.archive_passphrase.reveal() if cfg.crypto.archive_passphrase else None
        return load_secret_key(cfg.crypto.archive_secret_key, pw)
    except Exception as exc:  # noqa: BLE001
        raise NotReady(f"cannot load the archive secret key: {exc}") from None


def verify_archive(
    db: Any, ex: Executor, cfg: Any, dataset: str | None = None, decrypt: bool = False, out: Any = None
) -> int:
    """Rank 0's audit: claim the `available` files in batches as EX's workers need them, audit them, then
    the files nobody accounts for; one event per result, the operator's report on OUT. Files another
    audit running alongside holds are its part. Exit 1 if anything is not ok, else 5 (SKIPPED_EXIT) if
    other live jobs held some files to the end (or, with --decrypt, some are on another key), else 0."""
    import sys

    from .db import Event

    out = out or sys.stdout
    free_dead_claims(db, cfg.func.claim_timeout)
    job_id = start_job(db, "verify-archive", ex.ranks, make_job_id)
    book = ClaimBook(db, job_id, cfg.func.batch_size, cfg.func.flush_interval)
    rows = db.files(dataset, status="available")
    claims = ArchivedClaims(db, job_id, rows, most=cfg.func.batch_size, shared="verify-archive", size=_archive_size)
    try:
        results, other_key = _audit(ex, claims, book, cfg, decrypt)
    finally:
        book.close()
    if dataset is None:
        arch = storage.from_config(cfg)
        for rel in unexpected_files(cfg.workspaces.end_storage, db.files(), cfg.func.extensions, arch=arch):
            results.append(AuditResult("", "", "unexpected", f"{arch.location(rel)}: not recorded as available"))
            log.error("audit unexpected: %s", results[-1].details)
    for row, why in claims.skipped:
        log.warning("audit skipped: %s: %s (file %s)", row["archive_path"], why, row["file_id"])
    with db.transaction():
        db.add_events(
            [Event(r.file_id or None, r.dataset_id or None, f"audit-{r.result}", None, r.details) for r in results],
            job_id,
        )
    counts = {k: sum(r.result == k for r in results) for k in ("ok", "mismatch", "missing", "unexpected")}
    summary = (
        f"fixity audit: {len(claims.rows)} archived file(s) checked"
        + (" with decryption" if decrypt else "")
        + ": "
        + ", ".join(f"{v} {k}" for k, v in counts.items())
        + f"; {len(claims.skipped)} skipped because claimed by another live job"
        + (f"; {len(claims.theirs)} audited by another audit running alongside" if claims.theirs else "")
        + (f"; {len(other_key)} not decrypted (archived for another key)" if other_key else "")
    )
    code = 1 if len(results) - counts["ok"] else SKIPPED_EXIT if claims.skipped or other_key else 0
    db.job_end(job_id, code, summary)
    print(summary, file=out)
    for r in results:
        if r.result != "ok":
            print(f"  {r.result.upper()} {r.details}", file=out)
    for line in skipped_lines(claims.skipped, lambda r: str(r["archive_path"])) + other_key:
        print(line, file=out)
    return code


def _archive_size(r: dict[str, Any]) -> int:
    return int(r["archive_size"] or 0)


def _other_key(tasks: list[AuditTask], fp: str) -> list[str]:
    """With --decrypt: files recorded as archived for another key than FP, the configured secret key's (a
    rotation under way), have their bytes checked but are not decrypted: not a corruption. One line each."""
    lines = []
    for t in tasks:
        if t.archive_key not in (None, fp):
            t.decrypt = False
            lines.append(
                f"  NOT DECRYPTED {t.archive_path}: archived for key {t.archive_key}, the configured archive "
                f"secret key is for {fp} (a key rotation under way: audit again once it is finished)"
            )
    return lines


def _audit_task(r: dict[str, Any]) -> AuditTask:
    return AuditTask(
        r["file_id"],
        r["dataset_id"],
        r["archive_path"],
        r["archive_checksum"],
        r["archive_checksum_type"],
        r["md5"],
        r["sha256"],
        _archive_size(r),
        r["archive_key"],
    )


def _audit(
    ex: Executor, claims: ArchivedClaims, book: ClaimBook, cfg: Any, decrypt: bool
) -> tuple[list[AuditResult], list[str]]:
    """Every file CLAIMS gives through EX, as its workers need them (each claim goes back, in batches,
    once its file is audited); then, here on rank 0, those other jobs held and let go meanwhile. Returns
    the results and, with DECRYPT, one line per file on another key (not decrypted)."""
    from .keys import fingerprint, public_from_secret

    results: list[AuditResult] = []
    other_key: list[str] = []
    fp = fingerprint(public_from_secret(_archive_key(cfg))) if decrypt else None
    progress = Progress(0, 0, logger=log)

    def tasks(rows: list[dict[str, Any]]) -> list[AuditTask]:
        out = [_audit_task(r) for r in rows]
        other_key.extend(_other_key(out, fp) if fp is not None else [])
        progress.total_files += len(out)
        progress.total_bytes += sum(t.size for t in out)
        return out

    def on_result(r: AuditResult) -> None:
        results.append(r)
        claims.note(r.bytes_read)
        book.done([r.file_id])
        progress.add(r.bytes_read, r.result != "ok")
        (log.info if r.result == "ok" else log.error)("audit %s: %s (file %s)", r.result, r.details, r.file_id)

    def tick() -> None:
        book.tick()
        progress.tick()

    size, name = (lambda t: t.size), (lambda t: t.archive_path)
    ex.run([], on_result, tick=tick, key=size, name=name, more=lambda workers: tasks(claims.more(workers)))
    book.flush()
    here = None
    while last := claims.finish(tick=book.tick):
        here = here or InProcess(load_auditor(cfg, decrypt))
        here.run(tasks(last), on_result, tick=tick, key=size, name=name)
        book.flush()
    progress.close()
    return results, other_key
