-- DHCPv6 leases (issue 21) live in the same table as DHCPv4's: `ip` holds
-- the IPv6 address as text, and `iaid` the identity association it was
-- bound to (a machine holds one address per IA_NA; OVMF takes three per
-- boot). NULL for DHCPv4 leases.
ALTER TABLE leases ADD COLUMN iaid BIGINT;
