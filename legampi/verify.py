"""Fixity audit of the archive: hash every `available` file again and compare with what was recorded.

One read per file: the archived bytes are hashed as they stream past and, with ``--decrypt`` (needs the
archive secret key), decrypted in the same pass so the plaintext md5/sha256 are compared with the manifest.
The work function is plain Python; `parallel.Team` spreads it over the ranks like `process`.

An object in an S3 archive (`archive_path` s3://bucket/key) is read the same way, once, through the
process's store (legampi.storage): its bytes are compared with the recorded checksum and with the sha256
the server stored when it accepted them, and its provenance metadata stands in for the sidecar.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import archive, checksum, storage
from .formats import IngestError
from .workspace import scan

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
    `available` row accounts for (nor its sidecar), as archive names."""
    if arch is None and (conf := storage.configured()) is not None and conf.backend == "s3":
        arch = storage.open_archive(conf, None)
    known = set()
    for r in rows:
        if r["status"] != "available":
            continue
        final = archive.archive_name(r["file_name"], extensions)
        # a rotation's pending marker belongs to its file (`rekey` clears it), not an unexpected file
        known |= {final, f"{final}.sha256", f"{final}.md5", final + archive.PENDING_SUFFIX}
    listing = arch.store.iter_objects() if arch is not None and arch.backend == "s3" else scan(end_storage)
    return sorted(rel for rel, _ in listing if rel not in known)


def run_verify(
    cfg: Any, team: Any, connect: Any, dataset: str | None = None, decrypt: bool = False, out: Any = None
) -> int:
    """`legampi verify-archive` on every rank; exit 1 if any file is missing, altered or unexpected."""
    import sys

    from .db import Event
    from .keys import load_secret_key

    out = out or sys.stdout
    problem, db, sk = "", None, None
    if team.coordinator:
        try:
            db = connect()
            db.require_schema()
        except Exception as exc:  # noqa: BLE001 - reported to every rank as text, then exit 2
            problem = str(exc)
    if decrypt and (not team.coordinator or team.size == 1):
        if cfg.crypto.archive_secret_key is None:
            problem = "--decrypt needs [crypto] archive_secret_key"
        else:
            try:
                pw = cfg.crypto.archive_passphrase.reveal() if cfg.crypto.archive_passphrase else None
                sk = load_secret_key(cfg.crypto.archive_secret_key, pw)
            except Exception as exc:  # noqa: BLE001
                problem = f"cannot load the archive secret key: {exc}"
    if not team.ready(problem, log):
        return 2

    def work(t: AuditTask) -> AuditResult:
        return audit_file(t, sk)

    code = 0
    if team.coordinator:
        rows = db.files(dataset)
        tasks = [
            AuditTask(
                r["file_id"],
                r["dataset_id"],
                r["archive_path"],
                r["archive_checksum"],
                r["archive_checksum_type"],
                r["md5"],
                r["sha256"],
                int(r["archive_size"] or 0),
            )
            for r in rows
            if r["status"] == "available"
        ]
        results: list[AuditResult] = []

        def on_result(r: AuditResult) -> None:
            results.append(r)
            (log.info if r.result == "ok" else log.error)("audit %s: %s (file %s)", r.result, r.details, r.file_id)

        team.run(tasks, work, on_result, key=lambda t: t.size, name=lambda t: t.archive_path)
        if dataset is None:
            for rel in unexpected_files(cfg.workspaces.end_storage, db.files(), cfg.func.extensions):
                results.append(
                    AuditResult("", "", "unexpected", f"{cfg.workspaces.end_storage / rel}: not recorded as available")
                )
                log.error("audit unexpected: %s", results[-1].details)
        with db.transaction():
            db.add_events(
                [Event(r.file_id or None, r.dataset_id or None, f"audit-{r.result}", None, r.details) for r in results]
            )
        counts = {k: sum(r.result == k for r in results) for k in ("ok", "mismatch", "missing", "unexpected")}
        print(
            f"fixity audit: {len(tasks)} archived file(s) checked"
            + (" with decryption" if decrypt else "")
            + ": "
            + ", ".join(f"{v} {k}" for k, v in counts.items()),
            file=out,
        )
        for r in results:
            if r.result != "ok":
                print(f"  {r.result.upper()} {r.details}", file=out)
        code = 1 if len(results) - counts["ok"] else 0
    else:
        team.run(None, work, lambda r: None)
    return int(team.bcast(code))
