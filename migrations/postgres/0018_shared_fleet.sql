-- Several servers serving one inventory (issue 16, `[store] shared`).
--
-- `id_blocks`: ranges of ids a server takes for itself, so servers
-- numbering boots at once never pick the same id. `next` is the first id
-- nobody holds yet; a server takes [next, next + n) in one transaction.
-- A server alone on its database (SQLite, or PostgreSQL without `shared`)
-- numbers from the highest stored id and never reads this.
CREATE TABLE id_blocks (
    name  TEXT PRIMARY KEY,
    next  BIGINT NOT NULL
);

-- `fleet_inbox`: what a server that does not lead the fleet saw happen to
-- machines (a boot served, a confirmation, a reported failure), for the
-- leader to feed to the rollout engine and the watchdog. Written in the
-- transaction that records the fact itself; deleted by the leader in the
-- transaction that writes what the engine made of it, so each event is
-- taken exactly once even across a change of leader. `body` is JSON.
CREATE TABLE fleet_inbox (
    id      BIGSERIAL PRIMARY KEY,
    server  TEXT NOT NULL,
    kind    TEXT NOT NULL,
    body    TEXT NOT NULL,
    at_ms   BIGINT NOT NULL
);

-- Every committed change to what the boot path reads is announced on the
-- channel `ironboot_changes` (payload: the table, a space, and the writing
-- connection's application_name, so a server skips its own), once per
-- statement;
-- PostgreSQL delivers a transaction's notifications at its commit, folds
-- identical ones, and drops them on rollback, so a server that LISTENs
-- reloads only what was committed. SQLite has no listeners: one server.
CREATE FUNCTION ironboot_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('ironboot_changes', TG_TABLE_NAME || ' ' || current_setting('application_name'));
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER machines_changed AFTER INSERT OR UPDATE OR DELETE ON machines
    FOR EACH STATEMENT EXECUTE FUNCTION ironboot_changed();
CREATE TRIGGER groups_changed AFTER INSERT OR UPDATE OR DELETE ON groups
    FOR EACH STATEMENT EXECUTE FUNCTION ironboot_changed();
CREATE TRIGGER group_generations_changed AFTER INSERT OR UPDATE OR DELETE ON group_generations
    FOR EACH STATEMENT EXECUTE FUNCTION ironboot_changed();
CREATE TRIGGER generations_changed AFTER INSERT OR UPDATE OR DELETE ON generations
    FOR EACH STATEMENT EXECUTE FUNCTION ironboot_changed();
CREATE TRIGGER rollouts_changed AFTER INSERT OR UPDATE OR DELETE ON rollouts
    FOR EACH STATEMENT EXECUTE FUNCTION ironboot_changed();
CREATE TRIGGER machine_health_changed AFTER INSERT OR UPDATE OR DELETE ON machine_health
    FOR EACH STATEMENT EXECUTE FUNCTION ironboot_changed();
CREATE TRIGGER fleet_inbox_changed AFTER INSERT ON fleet_inbox
    FOR EACH STATEMENT EXECUTE FUNCTION ironboot_changed();
