-- The audit trail: one row per admin change, append-only, hash-chained in `seq` order. `hash`
-- is SHA-256 (hex) over the event's fields and `prev_hash` (src/store/audit.rs has the
-- encoding); the first event's `prev_hash` is 64 zeros. Never a secret value or a token.
CREATE TABLE audit_events (
    id TEXT PRIMARY KEY NOT NULL,
    seq BIGINT NOT NULL UNIQUE,
    occurred_at BIGINT NOT NULL,
    tenant_id TEXT,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target_id TEXT,
    target_name TEXT,
    request_id TEXT,
    outcome TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_events_tenant ON audit_events (tenant_id, seq);

-- The chain's head: the last event's seq and hash, one row. Every append reads it (on
-- PostgreSQL `FOR UPDATE`, which serialises appends) and moves it in the same transaction as
-- the change; `runta audit verify` compares it with the last event, so events removed from the
-- end are noticed too.
CREATE TABLE audit_chain (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    last_seq BIGINT NOT NULL,
    last_hash TEXT NOT NULL
);
INSERT INTO audit_chain (id, last_seq, last_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
