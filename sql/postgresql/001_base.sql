-- legampi tracking database, PostgreSQL.
-- Migration 001: the base schema (version 1, as legampi 77a6f9d created it).
-- `legampi init-db` applies sql/postgresql/NNN_*.sql in order, each step once, from the version recorded in
-- schema_version up to legampi.db.SCHEMA_VERSION, in one transaction; it records the version reached
-- itself, so no file inserts into schema_version. A fresh database runs every step from 001.
-- Keeps the seed's four tables (trackingtable, file, filedataset, dataset_log) with 64-bit sizes and
-- real timestamps, and adds what the pipeline needs: plaintext sha256, archive location and checksum,
-- errors, attempts, claims, an append-only event log and a job table for claim recovery.
CREATE TABLE IF NOT EXISTS schema_version (
    version     INTEGER PRIMARY KEY,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Transfer monitor state: one row per file seen in receiving (path relative to receiving).
CREATE TABLE IF NOT EXISTS trackingtable (
    name        TEXT PRIMARY KEY,
    size        BIGINT NOT NULL,
    mtime       DOUBLE PRECISION NOT NULL,
    passes      INTEGER NOT NULL DEFAULT 0,
    first_seen  TIMESTAMPTZ NOT NULL,
    last_seen   TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS file (
    file_id               TEXT PRIMARY KEY,
    dataset_id            TEXT NOT NULL,
    file_name             TEXT NOT NULL UNIQUE,   -- relative to receiving / processing
    size                  BIGINT,                 -- bytes of the received (encrypted) file
    md5                   CHAR(32),               -- plaintext md5 from the manifest
    sha256                CHAR(64),               -- plaintext sha256 (manifest, or computed)
    status                TEXT NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'received', 'processing', 'available', 'failed')),
    archive_path          TEXT,
    archive_checksum      TEXT,
    archive_checksum_type TEXT,
    archive_key           TEXT,                   -- fingerprint of the archive public key used
    plain_size            BIGINT,
    archive_size          BIGINT,
    error                 TEXT,
    attempts              INTEGER NOT NULL DEFAULT 0,
    claimed_by            TEXT,
    claimed_at            TIMESTAMPTZ,
    created_at            TIMESTAMPTZ NOT NULL,
    updated_at            TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS file_dataset_idx ON file (dataset_id);
CREATE INDEX IF NOT EXISTS file_status_idx ON file (status);

CREATE TABLE IF NOT EXISTS filedataset (
    dataset_id  TEXT NOT NULL,
    file_id     TEXT NOT NULL REFERENCES file (file_id),
    PRIMARY KEY (dataset_id, file_id)
);

CREATE TABLE IF NOT EXISTS dataset_log (
    dataset_id           TEXT PRIMARY KEY,
    n_files              INTEGER NOT NULL DEFAULT 0,
    n_bytes              BIGINT NOT NULL DEFAULT 0,
    date_requested       TIMESTAMPTZ,
    date_download_start  TIMESTAMPTZ,
    date_download_end    TIMESTAMPTZ,
    date_processing_end  TIMESTAMPTZ
);

-- Append-only audit: every status change of every file, and operator events.
CREATE TABLE IF NOT EXISTS file_event (
    id          BIGSERIAL PRIMARY KEY,
    file_id     TEXT,
    dataset_id  TEXT,
    event       TEXT NOT NULL,
    status      TEXT,
    details     TEXT,
    job_id      TEXT,
    at          TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS file_event_file_idx ON file_event (file_id);

-- One row per `legampi process` job: lets a rerun tell a dead job's claims from a live one's.
CREATE TABLE IF NOT EXISTS job (
    job_id        TEXT PRIMARY KEY,
    command       TEXT NOT NULL,
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    ranks         INTEGER NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL,
    heartbeat_at  TIMESTAMPTZ NOT NULL,
    ended_at      TIMESTAMPTZ,
    exit_status   INTEGER,
    summary       TEXT
);

-- Per-rank throughput of each job, for the report.
CREATE TABLE IF NOT EXISTS job_rank (
    job_id   TEXT NOT NULL,
    rank     INTEGER NOT NULL,
    host     TEXT NOT NULL,
    files    INTEGER NOT NULL,
    bytes    BIGINT NOT NULL,
    seconds  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, rank)
);
