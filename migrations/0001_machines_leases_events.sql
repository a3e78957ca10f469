-- Machines that network-booted from ironboot, the DHCP leases it holds, and
-- the boot ledger. Times are milliseconds since the Unix epoch.

CREATE TABLE machines (
    mac           TEXT PRIMARY KEY,          -- 52:54:00:12:34:56
    uuid          TEXT,                      -- DHCP option 97
    arch          TEXT,                      -- bios, efi-x64, http-x64, ...
    firmware      TEXT,                      -- pxe, ipxe, http_boot, onie
    vendor_class  TEXT,                      -- option 60 as sent
    user_class    TEXT,                      -- option 77
    hostname      TEXT,                      -- option 12
    circuit_id    TEXT,                      -- option 82.1 (relay port)
    remote_id     TEXT,                      -- option 82.2 (relay identity)
    relay         TEXT,                      -- giaddr of the last relayed request
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL
);

CREATE TABLE leases (
    ip            TEXT PRIMARY KEY,
    mac           TEXT,                      -- NULL while quarantined
    state         TEXT NOT NULL CHECK (state IN ('bound', 'declined')),
    expires_at_ms INTEGER NOT NULL,
    hostname      TEXT,
    updated_ms    INTEGER NOT NULL
);
CREATE INDEX leases_by_mac ON leases (mac);

CREATE TABLE events (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms  INTEGER NOT NULL,
    mac    TEXT,
    ip     TEXT,
    step   TEXT NOT NULL,                    -- dhcp.offer, dhcp.ack, tftp.complete, ...
    detail TEXT NOT NULL DEFAULT '{}',       -- JSON
    bytes  INTEGER
);
CREATE INDEX events_by_mac ON events (mac, at_ms);
CREATE INDEX events_by_time ON events (at_ms);
