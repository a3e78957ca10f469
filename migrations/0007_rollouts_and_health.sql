-- Rollouts and the last-known-good watchdog (issue 5).
--
-- A rollout is kept whole as the JSON of `rollout::Rollout` (spec, waves,
-- which machines moved, confirmed or failed, state and reason), with the
-- columns an operator or an index needs beside it. `rev` orders writes:
-- every change carries a higher one, and a row is only ever replaced by a
-- newer one, so writes from the boot path (through the ledger queue) and
-- from operator commands land in the order they happened in memory.
CREATE TABLE rollouts (
    id         INTEGER PRIMARY KEY,
    group_name TEXT NOT NULL,
    slot       TEXT NOT NULL,                -- the group pointer it moves: x86_64, arm64, …
    state      TEXT NOT NULL,                -- running, paused, succeeded, rolled_back, stopped, aborted
    holds      INTEGER NOT NULL,             -- 1 while it decides what its machines boot
    rollout    TEXT NOT NULL,                -- JSON of rollout::Rollout
    created_ms INTEGER NOT NULL,
    created_by TEXT,
    updated_ms INTEGER NOT NULL,
    rev        INTEGER NOT NULL
);
-- One rollout at a time holds a group (running, paused, or stopped on B).
CREATE UNIQUE INDEX rollouts_one_per_group ON rollouts (group_name) WHERE holds = 1;

-- Per machine: the boot the watchdog waits on, the failures it counted and
-- the degraded mark (JSON of rollout::watchdog::Health). No row: healthy.
CREATE TABLE machine_health (
    mac        TEXT PRIMARY KEY,
    health     TEXT NOT NULL,
    degraded   INTEGER NOT NULL DEFAULT 0,
    updated_ms INTEGER NOT NULL,
    rev        INTEGER NOT NULL
);
