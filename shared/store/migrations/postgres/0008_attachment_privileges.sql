-- Least privilege on attachments (expand-compatible: no binary relies on what is taken away).
-- Attachments are content-addressed and never change: the consumer may add them (INSERT ... ON
-- CONFLICT DO NOTHING needs no UPDATE) but not rewrite their bytes. A document's attachment
-- links are written only by a role that may write that document (the kind_writers rule of
-- migration 0005), so the consumer cannot attach files to the provider's documents.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'documents_consumer') THEN
        REVOKE UPDATE, DELETE ON attachments FROM documents_consumer;
    END IF;
END
$$;

ALTER TABLE document_attachments ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS document_attachments_read ON document_attachments;
CREATE POLICY document_attachments_read ON document_attachments FOR SELECT USING (true);
DROP POLICY IF EXISTS document_attachments_write ON document_attachments;
CREATE POLICY document_attachments_write ON document_attachments FOR ALL
    USING (EXISTS (SELECT 1 FROM documents d
                   WHERE d.id = document_id AND documents_writable(d.source_type)))
    WITH CHECK (EXISTS (SELECT 1 FROM documents d
                        WHERE d.id = document_id AND documents_writable(d.source_type)));
