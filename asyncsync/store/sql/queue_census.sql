-- Units on the work queue (pgqueuer's table) by kind and state, with the age of the oldest:
-- queued since they were due, running since they were picked, deferred (due later) and
-- failed since they were put back or failed: a periodic unit goes back on the queue as
-- the same row, so its creation is its first run, days ago for a healthy cycle.
-- $1 account (NULL: every account; units carry it in their JSON payload)
SELECT entrypoint AS kind,
       CASE WHEN status = 'picked' THEN 'running'
            WHEN status = 'queued' AND execute_after > now() THEN 'deferred'
            ELSE status::text END AS state,
       count(*) AS units,
       extract(epoch FROM now() - min(CASE WHEN status = 'picked' THEN updated
                                           WHEN status = 'queued' AND execute_after <= now()
                                                THEN execute_after
                                           ELSE updated END))::float8 AS oldest_s
FROM pgqueuer
WHERE $1::text IS NULL OR convert_from(payload, 'UTF8')::jsonb ->> 'account' = $1
GROUP BY 1, 2
ORDER BY 1, 2;
