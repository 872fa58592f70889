-- Fill leases: at most one provider replica fills a document at a time. `token` increases on
-- every claim and fences writes: a filler whose lease was taken over cannot write. A released
-- lease has no holder and keeps the outcome of the last fill (error, finished_at).
CREATE TABLE IF NOT EXISTS fill_leases (
    source_type     TEXT        NOT NULL,
    source_id       TEXT        NOT NULL,
    holder          TEXT,
    token           BIGINT      NOT NULL,
    claimed_at      TIMESTAMPTZ NOT NULL,
    expires_at      TIMESTAMPTZ NOT NULL,
    last_error_code INTEGER,
    last_error      TEXT,
    finished_at     TIMESTAMPTZ,
    PRIMARY KEY (source_type, source_id)
);
