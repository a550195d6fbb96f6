-- Whether the session $1 (a backend pid: a worker's lease session) holds the run lock $2
-- (a lock name), asked inside a merge's transaction. Advisory locks are per database; a
-- bigint key shows as classid = high 32 bits, objid = low 32 bits, objsubid = 1.
SELECT EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.pid = $1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid::bigint = ((hashtext($2)::bigint >> 32) & 4294967295)
      AND l.objid::bigint = (hashtext($2)::bigint & 4294967295)
);
