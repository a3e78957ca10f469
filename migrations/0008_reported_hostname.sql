-- What a machine says its name is (DHCP option 12) is a claim, kept apart
-- from the host name an operator sets (`hostname`, which templates and the
-- reboot hook use). Before this, option 12 from any sender overwrote it.
ALTER TABLE machines ADD COLUMN reported_hostname TEXT;
