-- A boot's steps are its events: the API reads them a page of boots at a
-- time (`WHERE boot_id IN (...)`). Partial, so the DHCP events that belong
-- to no boot (most of them) cost no index write.
CREATE INDEX events_by_boot ON events (boot_id, id) WHERE boot_id IS NOT NULL;
