-- legampi schema migration 004 (version 3 -> 4), PostgreSQL: every file's registration number, file_number.
-- Array task `branch` of `branches` takes the files whose file_number = branch + branches*n (n = 0, 1, ...;
-- legampi.workspace.share_of), the design card's formula: the number is given once, at registration,
-- and never changes, so registering or archiving other files never moves a file to another share.
-- Existing rows are numbered 1..N in registration order (created_at, then file_id). A new row is
-- numbered by the database (an identity column: GENERATED ALWAYS refuses a number given or changed by
-- a client), so registration code never names the column. Concurrent registrations never share a
-- number; a rolled-back registration leaves a gap, which only makes shares a little uneven.

ALTER TABLE file ADD COLUMN file_number BIGINT;
UPDATE file SET file_number = n.num
  FROM (SELECT file_id, row_number() OVER (ORDER BY created_at, file_id) AS num FROM file) AS n
 WHERE file.file_id = n.file_id;
ALTER TABLE file ALTER COLUMN file_number SET NOT NULL;
ALTER TABLE file ALTER COLUMN file_number ADD GENERATED ALWAYS AS IDENTITY;
SELECT setval(pg_get_serial_sequence('file', 'file_number'), coalesce(max(file_number), 0) + 1, false) FROM file;
ALTER TABLE file ADD CONSTRAINT file_number_key UNIQUE (file_number);
