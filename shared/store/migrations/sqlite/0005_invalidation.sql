-- Purge without deleting: InvalidateDocuments sets `invalidated_at` (RFC 3339 text), which makes
-- the document stale for every caller whatever its age; the next refresh clears it.
ALTER TABLE documents ADD COLUMN invalidated_at TEXT;
