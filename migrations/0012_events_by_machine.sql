-- One machine's events, newest first (the API's and the dashboard's
-- per-machine list, paged by id): found through this index, not by walking
-- every newer event of the fleet.
CREATE INDEX events_by_machine ON events (mac, id);
