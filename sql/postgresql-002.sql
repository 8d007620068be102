-- legampi schema migration 1 -> 2, PostgreSQL. Applied by `legampi init-db` to a version-1 database, in one
-- transaction with the archive_name fill (done in Python: the extension mapping needs the configuration).
-- init-db runs this file only when schema_version says 1 (as for SQLite, which has no ADD COLUMN IF NOT EXISTS).

ALTER TABLE file ADD COLUMN archive_name TEXT;
ALTER TABLE file ADD COLUMN transfer_checksum TEXT;
ALTER TABLE file ADD COLUMN transfer_checksum_type TEXT CHECK (transfer_checksum_type IN ('md5', 'sha256'));
CREATE INDEX IF NOT EXISTS file_archive_name_idx ON file (archive_name);

ALTER TABLE job ADD COLUMN state TEXT NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'ended', 'died'));
UPDATE job SET state = 'ended' WHERE ended_at IS NOT NULL;

INSERT INTO schema_version (version) VALUES (2) ON CONFLICT (version) DO NOTHING;
