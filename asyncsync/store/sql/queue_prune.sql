-- Forget the queue's log rows (one per pick, re-queue and end of every unit) once they are
-- counted in its statistics and older than the retention. $1 retention (interval)
DELETE FROM pgqueuer_log WHERE aggregated AND created < now() - $1::interval;
