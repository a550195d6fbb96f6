-- The units on the queue, newest first: id, kind, state, attempts, the worker holding it
-- and the payload. $1 limit
SELECT id, entrypoint AS kind, status::text AS state, attempts, queue_manager_id::text AS worker,
       execute_after, heartbeat, convert_from(payload, 'UTF8') AS payload
FROM pgqueuer ORDER BY id DESC LIMIT $1;
