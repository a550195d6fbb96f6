-- The most recent runs of an account, newest first. $1 account, $2 limit
SELECT id, mode, invoked_as, title, started_at, finished_at, outcome, counts, requests,
       requests_total, rate_limited, retries, quota_per_minute, errors
FROM sync_runs
WHERE account = $1
ORDER BY started_at DESC, id DESC
LIMIT $2;
