-- Lets the next start migrate (see schema_lock).
SELECT pg_advisory_unlock(hashtext('asyncsync.schema'));
