-- Name resolution that a caller cannot subvert. A function body is resolved with the search path
-- of the session that runs it, and a session's own temporary schema comes first for tables and
-- views: a role allowed temporary tables could shadow kind_writers (or pg_roles) and pass every
-- row-level security check that asks documents_writable. Each function of the schema now names
-- every object with its schema and runs with a fixed search path, pg_temp listed last (left out,
-- PostgreSQL would still search it first). Same signatures, same meaning: expand-only, every
-- earlier binary keeps working. (deploy/postgres/roles.sql also revokes TEMP from PUBLIC.)

CREATE OR REPLACE FUNCTION public.documents_writable(kind TEXT) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT EXISTS (
        SELECT 1 FROM public.kind_writers w
        JOIN pg_catalog.pg_roles r ON r.rolname = w.role_name
        WHERE w.source_type = kind
          AND pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER')
    )
$$;

CREATE OR REPLACE FUNCTION public.documents_notify_change() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_catalog.pg_notify('documents_changed',
            OLD.source_type || ' ' || OLD.source_id || ' 0');
    ELSE
        PERFORM pg_catalog.pg_notify('documents_changed',
            NEW.source_type || ' ' || NEW.source_id || ' ' || NEW.version);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION public.documents_notify_truncate() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('documents_changed', '~reset');
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION public.documents_history_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
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
$$;
