-- A TRUNCATE of documents is announced as "~reset": listeners forget everything they know.
CREATE OR REPLACE FUNCTION documents_notify_truncate() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('documents_changed', '~reset');
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS documents_truncated ON documents;
CREATE TRIGGER documents_truncated
    AFTER TRUNCATE ON documents
    FOR EACH STATEMENT EXECUTE FUNCTION documents_notify_truncate();
