-- Serializes schema migrations of parallel starts: a session's lock, taken before its
-- transaction begins (see database.schema_locked), released by schema_unlock.
SELECT pg_advisory_lock(hashtext('asyncsync.schema'));
