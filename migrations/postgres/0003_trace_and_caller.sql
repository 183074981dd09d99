-- Who stored an entry and the trace it belongs to (docs/decisions.md,
-- "Traces"): the accepting request's `traceparent` and `tracestate`, so
-- that each delivery attempt joins that trace, and the caller's JWT `sub`
-- and client id (`azp` or `client_id`), null without JWT authentication.
ALTER TABLE deliveries ADD COLUMN trace_parent TEXT;
ALTER TABLE deliveries ADD COLUMN trace_state TEXT;
ALTER TABLE deliveries ADD COLUMN created_by TEXT;
ALTER TABLE deliveries ADD COLUMN created_by_client TEXT;
