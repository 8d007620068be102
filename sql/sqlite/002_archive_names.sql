-- legampi schema migration 002 (version 1 -> 2), SQLite: archive names, transfer checksums, job state.
-- Applied by `legampi init-db` after 001_base.sql, in the same transaction as the archive_name fill
-- (done in Python, legampi.db.schema: the extension mapping needs the configuration).
-- init-db runs it only when schema_version says 1 (SQLite has no ADD COLUMN IF NOT EXISTS); the
-- columns land at the end of their tables, where a fresh database has them too.

-- the archive path relative to end_storage (collision checks), filled from file_name by init-db
ALTER TABLE file ADD COLUMN archive_name TEXT;
-- of the file as transferred (encrypted): the EGA API's `checksum`
ALTER TABLE file ADD COLUMN transfer_checksum TEXT;
ALTER TABLE file ADD COLUMN transfer_checksum_type TEXT CHECK (transfer_checksum_type IN ('md5', 'sha256'));
CREATE INDEX IF NOT EXISTS file_archive_name_idx ON file (archive_name);

-- running until job_end, died when recovery finds its processes gone
ALTER TABLE job ADD COLUMN state TEXT NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'ended', 'died'));
UPDATE job SET state = 'ended' WHERE ended_at IS NOT NULL;
