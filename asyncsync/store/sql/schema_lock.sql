-- Serializes schema migrations of parallel starts (held until the transaction ends).
SELECT pg_advisory_xact_lock(hashtext('asyncsync.schema'));
