-- Rolling upgrades and rollbacks: migrations are expand/contract. A migration that older
-- binaries can live with leaves this row alone; one that breaks them sets `oldest_compatible`
-- to its own version, and binaries that do not know it refuse the schema, naming both versions.
CREATE TABLE IF NOT EXISTS schema_compatibility (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    oldest_compatible INTEGER NOT NULL
);
INSERT OR IGNORE INTO schema_compatibility (id, oldest_compatible) VALUES (1, 1);
