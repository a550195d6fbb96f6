-- A worker's settings, seen now by the database's clock; rows of workers silent for longer
-- than $6 seconds go. $1 worker, $2 interval_s, $3 integrity_interval_s,
-- $4 background_slots, $5 heartbeat_s, $6 forget after (seconds)
WITH forgotten AS (
    DELETE FROM worker_settings
    WHERE seen_at < now() - make_interval(secs => $6) AND worker <> $1
)
INSERT INTO worker_settings
    (worker, interval_s, integrity_interval_s, background_slots, heartbeat_s, seen_at)
VALUES ($1, $2, $3, $4, $5, now())
ON CONFLICT (worker) DO UPDATE SET
    interval_s = EXCLUDED.interval_s,
    integrity_interval_s = EXCLUDED.integrity_interval_s,
    background_slots = EXCLUDED.background_slots,
    heartbeat_s = EXCLUDED.heartbeat_s,
    seen_at = now();
