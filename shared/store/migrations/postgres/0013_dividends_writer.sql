-- A third kind, dividends, written by the provider like its other kinds (expand only: older
-- binaries skip documents of a kind they do not know).
INSERT INTO public.kind_writers (source_type, role_name) VALUES
    ('dividends', 'documents_provider')
ON CONFLICT DO NOTHING;
