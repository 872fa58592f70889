-- Least privilege: each kind of document is written only by the roles listed for it in
-- kind_writers; every role that may read documents reads all of them. Row-level security does
-- not apply to the tables' owner (the role that ran the migrations) or superusers, so a
-- single-role set-up (development, tests) is unaffected. deploy/postgres/roles.sql creates the
-- two service roles named below and grants them their table privileges.
CREATE TABLE IF NOT EXISTS kind_writers (
    source_type TEXT NOT NULL,
    role_name   TEXT NOT NULL,
    PRIMARY KEY (source_type, role_name)
);

INSERT INTO kind_writers (source_type, role_name) VALUES
    ('announcement', 'documents_provider'),
    ('market_data', 'documents_provider'),
    ('announcement_download', 'documents_consumer')
ON CONFLICT DO NOTHING;

-- Whether the current role may write documents of `kind` (roles that do not exist never match).
CREATE OR REPLACE FUNCTION documents_writable(kind TEXT) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM kind_writers w JOIN pg_roles r ON r.rolname = w.role_name
        WHERE w.source_type = kind AND pg_has_role(current_user, r.oid, 'MEMBER')
    )
$$;

ALTER TABLE documents ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS documents_read ON documents;
CREATE POLICY documents_read ON documents FOR SELECT USING (true);
DROP POLICY IF EXISTS documents_insert ON documents;
CREATE POLICY documents_insert ON documents FOR INSERT WITH CHECK (documents_writable(source_type));
DROP POLICY IF EXISTS documents_update ON documents;
CREATE POLICY documents_update ON documents FOR UPDATE
    USING (documents_writable(source_type)) WITH CHECK (documents_writable(source_type));
DROP POLICY IF EXISTS documents_delete ON documents;
CREATE POLICY documents_delete ON documents FOR DELETE USING (documents_writable(source_type));

-- The consumer role's table privileges, where that role exists (deploy/postgres/roles.sql):
-- read everything, write documents (its own kind, by the policies above) and attachments.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'documents_consumer') THEN
        GRANT SELECT ON ALL TABLES IN SCHEMA public TO documents_consumer;
        GRANT INSERT, UPDATE ON documents, attachments, document_attachments TO documents_consumer;
    END IF;
END
$$;
