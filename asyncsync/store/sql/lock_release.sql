-- $1 lock name
SELECT pg_advisory_unlock(hashtext($1)::bigint);
