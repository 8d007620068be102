-- legampi schema migration 003 (version 2 -> 3), PostgreSQL: what a job's batched writes need (issue 15).
-- Applied by `legampi init-db` after 002_archive_names.sql.
--
-- Every recorded batch asks whether a dataset still has files waiting (its date_processing_end is set
-- once none has status pending, received, processing or failed). With an index on dataset_id alone
-- that read every row of the dataset, once per batch: a cost that grew with the dataset. On
-- (dataset_id, status) it is one index probe per status. The new index also serves every lookup by
-- dataset_id alone (its first column), so the old one goes: one index fewer to update per write.
CREATE INDEX IF NOT EXISTS file_dataset_status_idx ON file (dataset_id, status);
DROP INDEX IF EXISTS file_dataset_idx;

-- A monitor pass rewrites every tracked file's row (size, mtime, passes, last_seen), none of them indexed.
-- With free room on its page PostgreSQL writes the new row version there without touching the index
-- (a HOT update); full pages (the default fillfactor 100) force a new page and an index entry per row.
-- The table only holds files in transit, so half-empty pages cost little. Applies to pages written from now on.
ALTER TABLE trackingtable SET (fillfactor = 50);
