-- A machine's kind (server or switch) is operator-owned once an operator
-- has set it: what a client's requests suggest (an ONIE installer or a ZTP
-- script fetched from its address) then no longer changes it. Before this,
-- the last request decided, so a switch-looking request turned a server an
-- operator had declared into a switch.
ALTER TABLE machines ADD COLUMN kind_by_operator INTEGER NOT NULL DEFAULT 0;
