-- Documents shared by the provider and the consumer. One row per (source_type, source_id):
-- a refresh updates the row in place and bumps `version`.
CREATE TABLE IF NOT EXISTS documents (
    id               TEXT PRIMARY KEY,
    source_type      TEXT        NOT NULL,
    source_id        TEXT        NOT NULL,
    title            TEXT        NOT NULL,
    content_markdown TEXT        NOT NULL,
    content_json     JSONB       NOT NULL,
    tags             TEXT[]      NOT NULL DEFAULT '{}',
    content_hash     TEXT        NOT NULL,
    version          BIGINT      NOT NULL CHECK (version >= 1),
    last_synced      TIMESTAMPTZ NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT documents_source_key UNIQUE (source_type, source_id)
);

-- Binary attachments (downloaded PDFs), addressed by the sha256 of their bytes.
CREATE TABLE IF NOT EXISTS attachments (
    hash         TEXT PRIMARY KEY,
    content_type TEXT        NOT NULL,
    size_bytes   BIGINT      NOT NULL,
    data         BYTEA       NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Which document references which attachment, under what name (e.g. the announcement key).
CREATE TABLE IF NOT EXISTS document_attachments (
    document_id     TEXT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    attachment_hash TEXT NOT NULL REFERENCES attachments (hash),
    PRIMARY KEY (document_id, name)
);
