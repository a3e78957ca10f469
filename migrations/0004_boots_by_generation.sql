-- /metrics counts boots by stream, generation and result at every scrape
-- (SQLite is their source of truth, so they survive restarts); this index
-- covers that GROUP BY, and the API's boot filters by generation.
CREATE INDEX boots_by_generation ON boots (stream, generation, state);
