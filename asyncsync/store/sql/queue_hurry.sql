-- Units put back on the queue for a while that may start now (their account was freely
-- leased again; a person authorized it again), and a wake-up for the workers when any
-- was (one per transaction: the same channel and payload are delivered once). Returns
-- the ids made due; a unit put back a moment ago may not be on the queue yet (its
-- re-queue still on its way): not returned.
-- $1 unit ids, $2 the queue's channel, $3 the notification, $4 dedupe keys (units by key)
WITH hurried AS (
    UPDATE pgqueuer SET execute_after = now()
    WHERE (id = ANY($1::bigint[]) OR dedupe_key = ANY($4::text[]))
      AND status = 'queued' AND execute_after > now()
    RETURNING id
)
SELECT h.id, pg_notify($2, $3) FROM hurried h;
