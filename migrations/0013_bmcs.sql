-- Baseboard management controllers: how ironboot powers a machine and sets
-- its next boot to the network. A row belongs to one machine (`owner_kind`
-- 'machine', `owner` its MAC) or is a group's default ('group', its name);
-- a machine's own fields win over its group's, field by field, so a group
-- can hold the credentials a rack shares and each machine its address.
--
-- The password is sealed (ChaCha20-Poly1305 under the key file `bmc.key`
-- in the data directory, the owner as associated data): a copy of the
-- database alone does not reveal it, and a sealed value copied to another
-- row does not open there.
CREATE TABLE bmcs (
    owner_kind  TEXT NOT NULL CHECK (owner_kind IN ('machine', 'group')),
    owner       TEXT NOT NULL,
    protocol    TEXT CHECK (protocol IN ('redfish', 'ipmi')),
    address     TEXT,
    system_id   TEXT,
    username    TEXT,
    sealed      TEXT,
    boot_target TEXT CHECK (boot_target IN ('pxe', 'http')),
    verify_tls  BOOLEAN,
    -- What the BMC last said of the power (an operation or a status call).
    power_state TEXT,
    power_ms    BIGINT,
    updated_ms  BIGINT NOT NULL,
    PRIMARY KEY (owner_kind, owner)
);
