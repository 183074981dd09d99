-- A claim takes each due merchant's share of the batch rather than the
-- entries due first across merchants, so that one merchant's backlog no
-- longer holds back the entries of the others. It finds the merchants with
-- pending entries one index probe each, and each merchant's due entries
-- in order, on this index; a merchant left out of a claim costs a probe,
-- not a walk past its backlog. With the kind, the backlog's count per
-- merchant and kind reads this index alone. It takes the place of
-- `deliveries_due`, which only the claim in due order and that count read.
CREATE INDEX deliveries_pending_merchant ON deliveries (msn, next_attempt_at, seq, kind)
    WHERE state = 'pending';
DROP INDEX deliveries_due;

-- The claim checks that an entry is the first pending one of its order by
-- a probe of this index for the order's lowest `seq`, with the merchant
-- checked on the index entry. Led by the merchant, as it was, it tied with
-- every other index led by the merchant for a planner with no statistics
-- (a table just filled), which took one of those and read all of the
-- merchant's pending entries for each entry it claimed.
DROP INDEX deliveries_pending_order;
CREATE INDEX deliveries_pending_order ON deliveries (order_id, payment_type, msn, seq)
    WHERE state = 'pending';
