-- A document's identity and history are enforced by the database, for every writer: an update
-- may not lower `version`, nor give a source key another ID, nor move a row to another source
-- key. Compatible with every earlier binary.
CREATE TRIGGER IF NOT EXISTS documents_history_guard BEFORE UPDATE ON documents
WHEN NEW.version < OLD.version
  OR NEW.id <> OLD.id
  OR NEW.source_type <> OLD.source_type
  OR NEW.source_id <> OLD.source_id
BEGIN
    SELECT RAISE(ABORT, 'documents: a version may not go backwards, and a source key keeps its ID for life');
END;
