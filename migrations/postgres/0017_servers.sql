-- The ironboot servers that use this database (issue 16): one row per
-- server id (`server_name`, else HOST:HTTP_PORT), written by that server
-- alone, at start (upsert: started now, stopped NULL), every 5 s (its
-- heartbeat) and at a clean stop. `ironboot status` and GET /api/v1/servers
-- read it: up (a recent heartbeat), stopped (a clean stop), gone (the
-- heartbeat stopped without one: the server died).
--
-- `role` is free text read through a Rust enum, so the HA pair and
-- satellites add their roles without a table rebuild; today every server
-- is 'primary' (one server per database). `peer` is the id of its HA
-- partner, NULL until pairs exist. Nothing on the boot path writes here.
CREATE TABLE servers (
    id            TEXT PRIMARY KEY,
    role          TEXT NOT NULL,
    peer          TEXT,
    version       TEXT NOT NULL,
    started_ms    BIGINT NOT NULL,
    heartbeat_ms  BIGINT NOT NULL,
    stopped_ms    BIGINT,
    -- The HTTP base URL machines are told (http://SERVER_IP:PORT).
    http          TEXT NOT NULL,
    pid           BIGINT NOT NULL
);
