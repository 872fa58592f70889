-- Every change to a document is announced on the `documents_changed` channel (delivered at
-- commit) as "<source_type> <source_id> <version>", version 0 for a deletion. Providers use it
-- to keep their in-memory view of fresh documents exact, whoever wrote the row.
CREATE OR REPLACE FUNCTION documents_notify_change() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('documents_changed', OLD.source_type || ' ' || OLD.source_id || ' 0');
    ELSE
        PERFORM pg_notify('documents_changed', NEW.source_type || ' ' || NEW.source_id || ' ' || NEW.version);
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS documents_changed ON documents;
CREATE TRIGGER documents_changed
    AFTER INSERT OR UPDATE OR DELETE ON documents
    FOR EACH ROW EXECUTE FUNCTION documents_notify_change();
