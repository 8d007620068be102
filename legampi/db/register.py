"""Registration: a manifest's files into the database, checked against what is already registered.

``register`` adds new files and refuses any contradiction; ``amend`` (``register --amend``) also corrects
the expected values of files not yet archived. Either writes everything in one transaction or nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .connection import chunks, marks, now
from .files import FilesMixin
from .rows import AMENDABLE, Event, FileRow, Registration


class RegisterMixin(FilesMixin):
    """register, amend and the checks they share."""

    def register(self, dataset_id: str, entries: Sequence[dict[str, Any]], source: str) -> tuple[int, int]:
        """Insert a manifest's files in one transaction; returns (added, unchanged).

        Each entry has file_id, file_name, archive_name, md5, sha256, size, transfer_checksum(_type) and
        ``line`` (for messages). A contradiction with what is registered, or an archive name another file
        already has, raises ValueError naming the line, and nothing is written.
        """
        done = self._register(dataset_id, entries, source, None)
        return done.added, done.unchanged

    def amend(
        self, dataset_id: str, entries: Sequence[dict[str, Any]], source: str, in_processing: Callable[[str], bool]
    ) -> Registration:
        """Like register, but correct the expected values (AMENDABLE) of files not yet `available`, each
        change an `amended` event with old and new values. A failed file whose checksum changed goes back
        to `received` when IN_PROCESSING(file_name) says its source is there, so `process` retries it."""
        return self._register(dataset_id, entries, source, in_processing)

    def _register(
        self,
        dataset_id: str,
        entries: Sequence[dict[str, Any]],
        source: str,
        in_processing: Callable[[str], bool] | None,
    ) -> Registration:
        ts = now()
        done = Registration()
        with self.transaction():
            by_id = {r.file_id: r for r in self.file_rows(file_ids=[e["file_id"] for e in entries])}
            by_name = {r.file_name: r for r in self.file_rows(names=[e["file_name"] for e in entries])}
            if any(e.get("archive_name") is None for e in entries):  # the collision check needs it
                raise ValueError(f"{source}: entries lack archive_name; pass them through registration.prepare")
            by_archive = self._archive_owners([e["archive_name"] for e in entries])
            new, changes = [], []
            for e in entries:
                where = f"{source}:{e['line']}"
                old = by_id.get(e["file_id"])
                if old is None:
                    _check_new(e, where, by_name, by_archive)
                    new.append(e)
                elif diff := _changes(e, old, dataset_id, where, amending=in_processing is not None):
                    changes.append((where, old, diff))
                else:
                    done.unchanged += 1
            self.insert_many(
                "dataset_log",
                ("dataset_id", "date_requested"),
                [(dataset_id, ts)],
                conflict="ON CONFLICT (dataset_id) DO NOTHING",
            )
            self._insert_new(dataset_id, new, source, ts)
            self.analyze_after_growth("file", len(new))
            for where, old, diff in changes:
                self._amend_row(old, diff, where, in_processing or (lambda _name: False), done, ts)
            self.refresh_dataset_totals([dataset_id])
        done.added = len(new)
        return done

    def _archive_owners(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Registered files by archive name, for the names given (the column is indexed)."""
        out: dict[str, dict[str, Any]] = {}
        for chunk in chunks(sorted(set(names)), 500):
            for r in self.query(
                "SELECT file_id, dataset_id, file_name, archive_name FROM file WHERE archive_name IN "
                f"({marks(len(chunk))})",
                list(chunk),
            ):
                out.setdefault(r["archive_name"], r)
        return out

    def _insert_new(self, dataset_id: str, new: Sequence[dict[str, Any]], source: str, ts: str) -> None:
        """Insert new files as `pending`, each with its dataset link and `registered` event."""
        cols: tuple[str, ...] = ("file_id", "dataset_id", "file_name", "archive_name", "size", "md5", "sha256")
        cols += ("transfer_checksum", "transfer_checksum_type", "status", "created_at", "updated_at")
        self.insert_many(
            "file",
            cols,
            [
                (
                    *(e["file_id"], dataset_id, e["file_name"], e["archive_name"], e.get("size"), e.get("md5")),
                    *(e.get("sha256"), e.get("transfer_checksum"), e.get("transfer_checksum_type")),
                    *("pending", ts, ts),
                )
                for e in new
            ],
        )
        self.insert_many(
            "filedataset",
            ("dataset_id", "file_id"),
            [(dataset_id, e["file_id"]) for e in new],
            conflict="ON CONFLICT DO NOTHING",
        )
        self.add_events(
            [Event(e["file_id"], dataset_id, "registered", "pending", f"from {source}") for e in new], at=ts
        )

    def _amend_row(
        self,
        old: FileRow,
        diff: dict[str, tuple[Any, Any]],
        where: str,
        in_processing: Callable[[str], bool],
        done: Registration,
        ts: str,
    ) -> None:
        """Write one file's corrected values and its `amended` event (old and new values)."""
        status = old.status
        details = "; ".join(f"{k} {'(none)' if a is None else a} -> {b}" for k, (a, b) in diff.items())
        sets = [f"{k} = ?" for k in diff]
        if status == "failed" and set(diff) - {"size"}:
            if in_processing(old.file_name):
                status = "received"
                sets.append("error = NULL")
                done.retried.append(old.file_name)
                details += "; failed -> received: the next `process` retries it"
            else:
                done.stuck.append(old.file_name)
                details += "; stays failed: its source is not in processing"
        cur = self.execute(
            f"UPDATE file SET {', '.join(sets)}, status = ?, updated_at = ? WHERE file_id = ? AND status = ?",
            [*(b for _a, b in diff.values()), status, ts, old.file_id, old.status],
        )
        if cur.rowcount != 1:
            raise ValueError(f"{where}: file {old.file_id} changed while it was being amended; run it again")
        self.add_events([Event(old.file_id, old.dataset_id, "amended", status, f"{details} (from {where})")], at=ts)
        done.amended += 1


def _check_new(
    e: dict[str, Any], where: str, by_name: dict[str, FileRow], by_archive: dict[str, dict[str, Any]]
) -> None:
    """A new file must not reuse a registered file's name or archive path (one would lose its copy)."""
    clash = by_name.get(e["file_name"])
    if clash is not None:
        raise ValueError(
            f"{where}: file name {e['file_name']!r} is already registered as file "
            f"{clash.file_id} of dataset {clash.dataset_id}"
        )
    owner = by_archive.get(e["archive_name"])
    if owner is not None and owner["file_id"] != e["file_id"]:
        raise ValueError(
            f"{where}: {e['file_name']!r} would be archived as {e['archive_name']!r}, the archive path of "
            f"registered file {owner['file_id']} ({owner['file_name']!r}, dataset {owner['dataset_id']}); "
            "two files cannot share one archive path: rename one of them"
        )


def _changes(
    e: dict[str, Any], old: FileRow, dataset_id: str, where: str, amending: bool
) -> dict[str, tuple[Any, Any]]:
    """What a manifest entry would change on its registered row, as {column: (old, new)}; empty when the
    entry is unchanged (or, when registering, only fills values the row lacks, which --amend records).
    A contradiction register may not make, or amend may not make on this row, raises ValueError."""
    if old.dataset_id != dataset_id:
        raise ValueError(
            f"{where}: file {e['file_id']} is already registered in dataset {old.dataset_id}, not {dataset_id}"
        )
    if old.file_name != e["file_name"]:
        raise ValueError(
            f"{where}: file {e['file_id']} is registered with file_name {old.file_name}, "
            f"the manifest says {e['file_name']}"
        )
    was = {k: getattr(old, k) for k in AMENDABLE}
    diff = {
        k: (was[k], e[k])
        for k in AMENDABLE
        if e.get(k) is not None and (was[k] is None or str(e[k]) != str(was[k]).strip())
    }
    known = [k for k in diff if diff[k][0] is not None]
    if not amending and known:
        k = known[0]
        hint = "" if old.status == "available" else "; correct it with `legampi register --amend`"
        raise ValueError(
            f"{where}: file {e['file_id']} is registered with {k} {was[k]}, the manifest says {e[k]}{hint}"
        )
    if not amending or not diff:
        return {}
    if old.status in ("available", "processing"):
        why = (
            "is already available: archived and verified against its registered checksums"
            if old.status == "available"
            else f"is being processed by job {old.claimed_by}; amend it once that job has ended"
        )
        raise ValueError(f"{where}: file {e['file_id']} {why}; its {', '.join(diff)} cannot be amended")
    return diff
