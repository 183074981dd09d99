-- An order's entries are found by order alone: an order has a few
-- entries, and their state is read from the rows. With `state` in this
-- index, every delivery moved its entry in it, a page written at a random
-- place of an index over every entry; now an entry's key never changes.
DROP INDEX deliveries_order;
CREATE INDEX deliveries_order ON deliveries (msn, payment_type, order_id, kind);
