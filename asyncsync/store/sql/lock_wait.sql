-- Take a lock, waiting for its holder. $1 lock name.
SELECT pg_advisory_lock(hashtext($1)::bigint);
