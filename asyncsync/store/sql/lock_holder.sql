-- Who holds a run lock in this database (advisory locks are per database; a bigint key
-- shows as classid = high 32 bits, objid = low 32 bits, objsubid = 1). $1 lock name
SELECT a.application_name
FROM pg_locks l
JOIN pg_stat_activity a USING (pid)
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::bigint = ((hashtext($1)::bigint >> 32) & 4294967295)
  AND l.objid::bigint = (hashtext($1)::bigint & 4294967295)
  AND a.pid <> pg_backend_pid()
LIMIT 1;
