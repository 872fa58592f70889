-- A document's identity and history are enforced by the database, for every writer (the
-- services, an operator's repair, a restore script): an update may not lower `version`, nor give
-- a source key another ID, nor move a row to another source key. Compatible with every earlier
-- binary (they only ever raise versions and never change identities).
CREATE OR REPLACE FUNCTION documents_history_guard() RETURNS trigger AS $$
BEGIN
    IF NEW.version < OLD.version THEN
        RAISE EXCEPTION 'documents: the version of % % may not go backwards (% -> %)',
            OLD.source_type, OLD.source_id, OLD.version, NEW.version
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.id <> OLD.id OR NEW.source_type <> OLD.source_type OR NEW.source_id <> OLD.source_id THEN
        RAISE EXCEPTION 'documents: % % keeps its ID and source key for life', OLD.source_type, OLD.source_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS documents_history_guard ON documents;
CREATE TRIGGER documents_history_guard BEFORE UPDATE ON documents
    FOR EACH ROW EXECUTE FUNCTION documents_history_guard();
