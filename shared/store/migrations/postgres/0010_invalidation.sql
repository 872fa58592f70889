-- Purge without deleting: InvalidateDocuments sets `invalidated_at`, which makes the document
-- stale for every caller whatever its age; the next refresh clears it. The row, its ID and its
-- content stay. (Expand-only: older binaries ignore the column.)
ALTER TABLE documents ADD COLUMN IF NOT EXISTS invalidated_at TIMESTAMPTZ;
