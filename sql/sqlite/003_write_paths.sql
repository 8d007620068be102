-- legampi schema migration 003 (version 2 -> 3), SQLite: what a job's batched writes need (issue 15).
-- Applied by `legampi init-db` after 002_archive_names.sql.
--
-- Every recorded batch asks whether a dataset still has files waiting (its date_processing_end is set
-- once none has status pending, received, processing or failed). With an index on dataset_id alone
-- that read every row of the dataset, once per batch: a cost that grew with the dataset. On
-- (dataset_id, status) it is one index probe per status. The new index also serves every lookup by
-- dataset_id alone (its first column), so the old one goes: one index fewer to update per write.
CREATE INDEX IF NOT EXISTS file_dataset_status_idx ON file (dataset_id, status);
DROP INDEX IF EXISTS file_dataset_idx;
