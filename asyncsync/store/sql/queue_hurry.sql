-- Units put back on the queue for a while that may start now (their account was freely
-- leased again), and a wake-up for the workers when any was. $1 unit ids, $2 the queue's
-- channel, $3 the notification
WITH hurried AS (
    UPDATE pgqueuer SET execute_after = now()
    WHERE id = ANY($1::bigint[]) AND status = 'queued' AND execute_after > now()
    RETURNING id
)
SELECT pg_notify($2, $3) FROM (SELECT count(*) AS n FROM hurried) h WHERE h.n > 0;
