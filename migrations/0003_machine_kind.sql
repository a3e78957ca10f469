-- A machine is a server or a network switch (ONIE, network-OS ZTP).
ALTER TABLE machines ADD COLUMN kind TEXT NOT NULL DEFAULT 'server'
    CHECK (kind IN ('server', 'switch'));
