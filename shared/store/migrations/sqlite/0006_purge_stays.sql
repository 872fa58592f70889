-- Ban semantics for purges: what was fetched before a purge stays purged. A write that clears
-- a document's invalidation mark while refreshing it (its version goes up) keeps the mark
-- unless the fill that wrote it claimed its lease after the mark was set (the claim is no later
-- than the start of that fill's fetch; both times from this machine's clock, the one every
-- process on the file shares). Enforced here for every writer, an older release included.
-- Invalidation times are RFC 3339 text, lease times Unix milliseconds.
CREATE TRIGGER IF NOT EXISTS documents_purge_guard AFTER UPDATE OF version ON documents
WHEN OLD.invalidated_at IS NOT NULL AND NEW.invalidated_at IS NULL
  AND NEW.version <> OLD.version
  AND NOT coalesce((
      SELECT l.claimed_at_ms > (julianday(OLD.invalidated_at) - 2440587.5) * 86400000.0
      FROM fill_leases l
      WHERE l.source_type = NEW.source_type AND l.source_id = NEW.source_id), 0)
BEGIN
    UPDATE documents SET invalidated_at = OLD.invalidated_at WHERE id = NEW.id;
END;
