-- The latest run of each mode of an account, and the latest that finished (ok or attention).
-- $1 account
SELECT DISTINCT ON (r.mode, r.finished)
       r.mode, r.finished, r.invoked_as, r.title, r.started_at, r.finished_at, r.outcome,
       r.requests_total, r.rate_limited, r.quota_per_minute, r.errors, r.report -> 'facts' AS facts
FROM (
    SELECT *, outcome IN ('ok', 'attention') AS finished FROM sync_runs WHERE account = $1
) r
ORDER BY r.mode, r.finished, r.started_at DESC, r.id DESC;
