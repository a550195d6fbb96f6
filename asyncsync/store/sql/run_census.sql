-- The mirror of an account as its latest sync counted it at its end: orders per status
-- (the report's by_status, "mirror") and the detail backlog. NULL when no sync counted it.
-- $1 account
SELECT (report -> 'by_status')::text AS by_status,
       (report -> 'counts' ->> 'detail_backlog')::bigint AS detail_backlog
FROM sync_runs
WHERE account = $1 AND mode = 'sync' AND report -> 'counts' ? 'detail_backlog'
ORDER BY started_at DESC, id DESC
LIMIT 1;
