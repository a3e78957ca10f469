-- Several servers serving one inventory (issue 16, `[store] shared`).
--
-- `id_blocks`: ranges of ids a server takes for itself, so servers
-- numbering boots at once never pick the same id. `next` is the first id
-- nobody holds yet; a server takes [next, next + n) in one transaction.
-- A server alone on its database (SQLite, or PostgreSQL without `shared`)
-- numbers from the highest stored id and never reads this.
CREATE TABLE id_blocks (
    name  TEXT PRIMARY KEY,
    next  BIGINT NOT NULL
);

-- `fleet_inbox`: what a server that does not lead the fleet saw happen to
-- machines (a boot served, a confirmation, a reported failure), for the
-- leader to feed to the rollout engine and the watchdog. Written in the
-- transaction that records the fact itself; deleted by the leader in the
-- transaction that writes what the engine made of it, so each event is
-- taken exactly once even across a change of leader. `body` is JSON.
CREATE TABLE fleet_inbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    server  TEXT NOT NULL,
    kind    TEXT NOT NULL,
    body    TEXT NOT NULL,
    at_ms   BIGINT NOT NULL
);
