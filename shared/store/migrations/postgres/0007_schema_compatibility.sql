-- Rolling upgrades and rollbacks: migrations are expand/contract. A migration that older
-- binaries can live with (a new table, column with a default, index, trigger) leaves this row
-- alone, and those binaries keep running against the newer schema. A migration that breaks them
-- (a column dropped or renamed, a meaning changed) sets `oldest_compatible` to its own version:
-- binaries that do not know that migration then refuse the schema with a message naming both
-- versions, instead of misbehaving.
CREATE TABLE IF NOT EXISTS schema_compatibility (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    oldest_compatible BIGINT NOT NULL
);
INSERT INTO schema_compatibility (id, oldest_compatible) VALUES (1, 1) ON CONFLICT (id) DO NOTHING;
