-- A claim walks the due entries in their order and stops at its batch
-- size, and finds an entry's earlier pending entry of the same order with
-- one index probe, however long the backlog.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at, seq);
CREATE INDEX deliveries_pending_order ON deliveries (msn, payment_type, order_id, seq)
    WHERE state = 'pending';
