-- Take a run lock without waiting. $1 lock name. Returns true when taken.
SELECT pg_try_advisory_lock(hashtext($1)::bigint);
