-- Fill leases: at most one provider replica fills a document at a time. `token` increases on
-- every claim and fences writes: a filler whose lease was taken over cannot write. A released
-- lease has no holder and keeps the outcome of the last fill. Times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS fill_leases (
    source_type     TEXT    NOT NULL,
    source_id       TEXT    NOT NULL,
    holder          TEXT,
    token           INTEGER NOT NULL,
    claimed_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL,
    last_error_code INTEGER,
    last_error      TEXT,
    finished_at_ms  INTEGER,
    PRIMARY KEY (source_type, source_id)
);
