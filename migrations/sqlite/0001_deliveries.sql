-- The outbox: one row per accepted asynchronous request (docs/decisions.md, "Outbox").
-- Times are Unix milliseconds (UTC).
CREATE TABLE deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    msn TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('receipt', 'category')),
    payment_type TEXT NOT NULL,
    order_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    delivered_at INTEGER,
    next_attempt_at INTEGER,
    last_error TEXT,
    lease_owner TEXT,
    lease_until INTEGER
);

-- At most one pending receipt per order: a second one is a repost or a conflict.
CREATE UNIQUE INDEX deliveries_one_pending_receipt
    ON deliveries (msn, payment_type, order_id)
    WHERE state = 'pending' AND kind = 'receipt';
CREATE INDEX deliveries_order ON deliveries (msn, payment_type, order_id, kind, state);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX deliveries_listing ON deliveries (msn, state, seq);
CREATE INDEX deliveries_finished ON deliveries (state, updated_at);
