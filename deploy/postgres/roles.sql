-- The two service roles of a least-privilege PostgreSQL deployment. Run once as a superuser in
-- the documents database (docker-compose.yml mounts it into the image's init folder):
--
--   psql postgres://postgres@HOST/documents -f deploy/postgres/roles.sql
--
-- documents_provider owns the schema (it runs the migrations) and writes announcements and
-- market data; documents_consumer reads every document and writes only its own kind,
-- announcement_download (row-level security, migration 0005), and the attachments it
-- downloads. It cannot change the schema, so the consumer runs with DATABASE_MIGRATE=false.
-- The passwords are for the local stack only: change them (ALTER ROLE ... PASSWORD) elsewhere.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'documents_provider') THEN
        CREATE ROLE documents_provider LOGIN PASSWORD 'provider';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'documents_consumer') THEN
        CREATE ROLE documents_consumer LOGIN PASSWORD 'consumer';
    END IF;
END
$$;

-- Nobody but the provider creates objects in the schema (PostgreSQL before 15 lets every role).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
-- Nor temporary ones: a session's temporary schema is searched first for tables, so a role
-- with TEMP can shadow names that functions look up (migration 0011 pins every function's
-- search path; this takes the means away as well). Nothing in either service needs TEMP.
DO $$
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
END
$$;
GRANT USAGE, CREATE ON SCHEMA public TO documents_provider;
GRANT USAGE ON SCHEMA public TO documents_consumer;

-- Reading: every table the provider creates (its migrations) and every existing one. Writing
-- for the consumer is granted table by table, by migration 0005 when the provider creates the
-- tables, or here when they already exist; it never includes kind_writers, and the leases only
-- of its own kind (row-level security, migration 0009).
ALTER DEFAULT PRIVILEGES FOR ROLE documents_provider IN SCHEMA public
    GRANT SELECT ON TABLES TO documents_consumer;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO documents_consumer;
DO $$
BEGIN
    IF to_regclass('public.documents') IS NOT NULL THEN
        GRANT INSERT, UPDATE ON documents, document_attachments TO documents_consumer;
        -- Its own kind's leases only (row-level security, migration 0009).
        GRANT INSERT, UPDATE ON fill_leases TO documents_consumer;
        -- Attachments never change: adding them is all the consumer may do.
        GRANT INSERT ON attachments TO documents_consumer;
        GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO documents_provider;
    END IF;
END
$$;
