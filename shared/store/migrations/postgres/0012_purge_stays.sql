-- Ban semantics for purges: what was fetched before a purge stays purged. A write that would
-- clear a document's invalidation mark (a refresh: its version goes up) clears it only when the
-- fill that wrote it claimed its lease after the mark was set, the lease's claim being the
-- database's time no later than the start of that fill's fetch. Otherwise the new version is
-- stored still invalidated, and the next lookup refreshes it. Enforced here, so a writer that
-- does not know the rule (an older release during a rolling upgrade, an operator's script)
-- cannot clear a mark either. Expand-only: nothing older breaks; an older replica that refreshes
-- during a purge simply leaves the mark for the next fill.
CREATE OR REPLACE FUNCTION public.documents_purge_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    claimed timestamptz;
BEGIN
    IF OLD.invalidated_at IS NOT NULL AND NEW.invalidated_at IS NULL
       AND NEW.version <> OLD.version THEN
        SELECT l.claimed_at INTO claimed FROM public.fill_leases l
        WHERE l.source_type = NEW.source_type AND l.source_id = NEW.source_id;
        IF claimed IS NULL OR claimed <= OLD.invalidated_at THEN
            NEW.invalidated_at := OLD.invalidated_at;
        END IF;
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS documents_purge_guard ON documents;
CREATE TRIGGER documents_purge_guard BEFORE UPDATE ON documents
    FOR EACH ROW EXECUTE FUNCTION public.documents_purge_guard();
