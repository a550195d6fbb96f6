-- The latest run of each mode of an account, and the latest that finished (ok or attention).
-- $1 account
-- Index lookups only (sync_runs grows by a row per serve cycle, ~35,000 a year an account
-- at the default interval): the account's modes by a skip scan of the index, then for
-- each mode its newest run and its newest finished run.
WITH RECURSIVE modes AS (
    (SELECT mode FROM sync_runs WHERE account = $1 ORDER BY mode LIMIT 1)
    UNION ALL
    SELECT (SELECT s.mode FROM sync_runs s
            WHERE s.account = $1 AND s.mode > m.mode ORDER BY s.mode LIMIT 1)
    FROM modes m
    WHERE m.mode IS NOT NULL
)
SELECT r.*
FROM modes m
CROSS JOIN LATERAL (
    (SELECT s.mode, s.invoked_as, s.title, s.started_at, s.finished_at, s.outcome,
            s.requests_total, s.rate_limited, s.quota_per_minute, s.errors,
            s.report -> 'facts' AS facts, (s.report ->> 'recorded_at')::timestamptz AS recorded_at
     FROM sync_runs s
     WHERE s.account = $1 AND s.mode = m.mode
     ORDER BY s.started_at DESC, s.id DESC LIMIT 1)
    UNION ALL
    (SELECT s.mode, s.invoked_as, s.title, s.started_at, s.finished_at, s.outcome,
            s.requests_total, s.rate_limited, s.quota_per_minute, s.errors,
            s.report -> 'facts' AS facts, (s.report ->> 'recorded_at')::timestamptz AS recorded_at
     FROM sync_runs s
     WHERE s.account = $1 AND s.mode = m.mode AND s.outcome IN ('ok', 'attention')
     ORDER BY s.started_at DESC, s.id DESC LIMIT 1)
) r
WHERE m.mode IS NOT NULL;
