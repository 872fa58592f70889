-- The consumer coordinates its replicas with the same fill leases the providers use, on the
-- documents it owns: one round per ticker at a time across consumer processes, so a PDF is
-- downloaded once even when two replicas process one ticker at once. It may read and write the
-- leases of the kinds it may write (kind_writers, migration 0005), no other.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'documents_consumer') THEN
        GRANT SELECT, INSERT, UPDATE ON fill_leases TO documents_consumer;
    END IF;
END
$$;

ALTER TABLE fill_leases ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS fill_leases_by_kind ON fill_leases;
CREATE POLICY fill_leases_by_kind ON fill_leases FOR ALL
    USING (documents_writable(source_type)) WITH CHECK (documents_writable(source_type));
