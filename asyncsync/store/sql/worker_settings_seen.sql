-- The settings of the workers seen within $1 seconds (by the database's clock).
SELECT worker, interval_s, integrity_interval_s, background_slots, heartbeat_s
FROM worker_settings
WHERE seen_at >= now() - make_interval(secs => $1)
ORDER BY worker;
