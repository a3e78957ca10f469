-- Immutable image generations, groups that point at them, each boot of each
-- machine with the generation it was served, and API tokens.

-- One row per imported image (the manifest file lives in the image store).
CREATE TABLE images (
    digest     TEXT PRIMARY KEY,             -- sha256 of the canonical manifest
    arch       TEXT NOT NULL,                -- x86_64, arm64
    manifest   TEXT NOT NULL,                -- the canonical manifest JSON
    created_ms INTEGER NOT NULL
);

-- stream + number -> image. Never updated; deleted only by garbage collection.
CREATE TABLE generations (
    stream      TEXT NOT NULL,
    number      INTEGER NOT NULL,
    image       TEXT NOT NULL REFERENCES images (digest),
    imported_ms INTEGER NOT NULL,
    imported_by TEXT,                        -- the API token's name
    PRIMARY KEY (stream, number)
);

CREATE TABLE groups (
    name       TEXT PRIMARY KEY,
    stream     TEXT,                         -- the generation machines in the group boot
    generation INTEGER,
    variables  TEXT NOT NULL DEFAULT '{}',   -- JSON object, seen by templates
    updated_ms INTEGER NOT NULL
);
INSERT INTO groups (name, updated_ms) VALUES ('default', 0);

ALTER TABLE machines ADD COLUMN group_name TEXT NOT NULL DEFAULT 'default';
ALTER TABLE machines ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE machines ADD COLUMN serial TEXT;            -- from iPXE ${serial}
ALTER TABLE machines ADD COLUMN ip TEXT;                -- last address seen
ALTER TABLE machines ADD COLUMN pin_stream TEXT;        -- a pin beats the group
ALTER TABLE machines ADD COLUMN pin_generation INTEGER;
ALTER TABLE machines ADD COLUMN current_stream TEXT;    -- confirmed by phone home
ALTER TABLE machines ADD COLUMN current_generation INTEGER;
ALTER TABLE machines ADD COLUMN last_good_stream TEXT;
ALTER TABLE machines ADD COLUMN last_good_generation INTEGER;

-- One row per boot attempt: created when the per-machine script is served.
CREATE TABLE boots (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    mac          TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,       -- sha256 of the per-boot token
    stream       TEXT,
    generation   INTEGER,
    image        TEXT,
    state        TEXT NOT NULL CHECK (state IN ('served', 'confirmed', 'failed', 'nothing')),
    reason       TEXT,                       -- why 'nothing' or 'failed'
    started_ms   INTEGER NOT NULL,
    confirmed_ms INTEGER
);
CREATE INDEX boots_by_mac ON boots (mac, id);

ALTER TABLE events ADD COLUMN boot_id INTEGER;

CREATE TABLE api_tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,         -- sha256 of the token; the token is never stored
    role       TEXT NOT NULL CHECK (role IN ('admin', 'read')),
    created_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
