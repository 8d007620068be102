-- legampi schema migration 004 (version 3 -> 4), SQLite: every file's registration number, file_number.
-- Array task `branch` of `branches` takes the files whose file_number = branch + branches*n (n = 0, 1, ...;
-- legampi.workspace.share_of), the design card's formula: the number is given once, at registration,
-- and never changes, so registering or archiving other files never moves a file to another share.
-- Existing rows are numbered 1..N in registration order (created_at, then file_id). A new row is
-- numbered by the database (max + 1, in the AFTER INSERT trigger: safe under SQLite's single writer),
-- so registration code never names the column; a second trigger refuses to change a number once given.

ALTER TABLE file ADD COLUMN file_number INTEGER;
UPDATE file SET file_number = n.num
  FROM (SELECT file_id, row_number() OVER (ORDER BY created_at, file_id) AS num FROM file) AS n
 WHERE file.file_id = n.file_id;
CREATE UNIQUE INDEX IF NOT EXISTS file_number_idx ON file (file_number);
-- (each trigger is one line per statement: legampi.db.split_sql splits on ';' at line ends)
CREATE TRIGGER IF NOT EXISTS file_number_given AFTER INSERT ON file WHEN NEW.file_number IS NULL
BEGIN UPDATE file SET file_number = (SELECT coalesce(max(file_number), 0) + 1 FROM file) WHERE file_id = NEW.file_id; END;
CREATE TRIGGER IF NOT EXISTS file_number_kept BEFORE UPDATE OF file_number ON file
WHEN OLD.file_number IS NOT NULL AND NEW.file_number IS NOT OLD.file_number
BEGIN SELECT RAISE(ABORT, 'file.file_number is given once, at registration, and never changes'); END;
