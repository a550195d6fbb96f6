-- One row of run history. $1 account, $2 mode, $3 invoked_as, $4 title, $5 started_at,
-- $6 finished_at, $7 outcome, $8 counts (JSON), $9 requests by endpoint (JSON),
-- $10 requests_total, $11 rate_limited, $12 retries, $13 quota_per_minute, $14 errors,
-- $15 report (JSON)
INSERT INTO sync_runs (
    account, mode, invoked_as, title, started_at, finished_at, outcome, counts, requests,
    requests_total, rate_limited, retries, quota_per_minute, errors, report
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10, $11, $12, $13, $14::text[],
        $15::jsonb)
RETURNING id;
