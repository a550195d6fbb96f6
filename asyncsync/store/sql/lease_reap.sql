-- End the writing transactions of workers that hold no lease any more: a worker frozen
-- (SIGSTOP, a paused container) past its heartbeat timeout has lost its lease session,
-- and its units went to other workers, but its open transactions keep the rows they
-- wrote locked until the server ends them: one idle after the idle-in-transaction timeout,
-- but a COPY waiting for the frozen process's data is active, bounded only by the
-- statement timeout (2 minutes), and the worker that took the account over failed every
-- merge on those locks meanwhile. None of them could commit (the lease fence refuses a
-- merge whose worker lost its lease), so ending them loses nothing. A worker's sessions
-- all carry its name; one that holds a run lock still has its lease session. Only
-- transactions older than $1 (the lease session's silence bound, an interval): a frozen
-- worker's began before it froze, and a live worker's short ones (the queue's, while it
-- holds no lease) are left alone. Returns how many were ended.
WITH orphans AS (
    SELECT s.pid
    FROM pg_stat_activity s
    WHERE s.datname = current_database()
      AND s.application_name LIKE 'asyncsync worker %'
      AND s.backend_xid IS NOT NULL
      AND s.xact_start < now() - $1::interval
      AND s.pid <> pg_backend_pid()
      AND NOT EXISTS (
          SELECT 1
          FROM pg_stat_activity h
          JOIN pg_locks l ON l.pid = h.pid
          WHERE h.datname = current_database()
            AND h.application_name = s.application_name
            AND l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      )
)
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM orphans;
