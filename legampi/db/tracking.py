"""The transfer monitor's state (table ``trackingtable``) and the write of one monitor pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .connection import chunks, marks, now
from .files import FilesMixin
from .rows import Event


class TrackingMixin(FilesMixin):
    """What `monitor` reads and writes."""

    def tracking(self) -> dict[str, dict[str, Any]]:
        """Every file seen in receiving, by name: size, mtime, stable passes, first and last seen."""
        return {
            r["name"]: r
            for r in self.query("SELECT name, size, mtime, passes, first_seen, last_seen FROM trackingtable")
        }

    def apply_monitor_pass(
        self,
        upserts: Sequence[tuple[str, int, float, int]],
        forget: Sequence[str],
        moved: Sequence[dict[str, Any]],
        sizes: dict[str, int],
    ) -> None:
        """Write one monitor pass: tracking rows, files moved to processing, dataset dates."""
        ts = now()
        with self.transaction():
            old = {r["name"] for r in self.query("SELECT name FROM trackingtable")}
            new_rows = [(n, s, m, p, ts, ts) for n, s, m, p in upserts if n not in old]
            self.insert_many("trackingtable", ("name", "size", "mtime", "passes", "first_seen", "last_seen"), new_rows)
            self.analyze_after_growth("trackingtable", len(new_rows))
            self.update_from_values(
                "trackingtable",
                "name",
                (("size", "BIGINT"), ("mtime", "DOUBLE PRECISION"), ("passes", "INTEGER")),
                [(n, s, m, p) for n, s, m, p in upserts if n in old],
                extra_sets=(("last_seen", ts),),
            )
            for chunk in chunks(list(forget), 500):
                self.execute(f"DELETE FROM trackingtable WHERE name IN ({marks(len(chunk))})", chunk)
            # a size from the manifest is kept; the observed size only fills a gap, and only once the
            # transfer has finished (a growing file's first partial size must not stick). A moved row read
            # with its size known is skipped: a known size is never unset (amend only replaces it).
            gaps = {f["file_name"] for f in moved if f.get("size") is None}
            self.update_from_values(
                "file",
                "file_name",
                (("size", "BIGINT"),),
                [(name, size) for name, size in sizes.items() if name in gaps],
                where="file.size IS NULL",
            )
            seen = self.files(names=[r[0] for r in new_rows], columns=("dataset_id",)) if new_rows else []
            self.stamp_dataset(
                {r["dataset_id"] for r in seen} | {f["dataset_id"] for f in moved}, "date_download_start", ts
            )
            for chunk in chunks([f["file_id"] for f in moved], 500):
                self.execute(
                    f"UPDATE file SET status = 'received', updated_at = ? WHERE file_id IN ({marks(len(chunk))}) "
                    "AND status = 'pending'",
                    [ts, *chunk],
                )
            self.add_events(
                [Event(f["file_id"], f["dataset_id"], "received", "received", "moved to processing") for f in moved],
                at=ts,
            )
            touched = {f["dataset_id"] for f in moved} | {r["dataset_id"] for r in seen}
            self.refresh_dataset_totals(touched)
            self.stamp_dataset(
                {f["dataset_id"] for f in moved}, "date_download_end", ts, when_no_status_in=("pending",)
            )
