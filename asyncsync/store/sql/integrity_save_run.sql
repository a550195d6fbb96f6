-- One row per integrity run. $1 account, $2 started_at, $3 finished_at, $4 consistent, $5 report
-- Idempotent: tried again after a lost answer, it writes no second row.
INSERT INTO integrity_runs (account, started_at, finished_at, consistent, report)
SELECT $1, $2, $3, $4, $5::jsonb
WHERE NOT EXISTS (
    SELECT 1 FROM integrity_runs WHERE account = $1 AND started_at = $2 AND finished_at = $3
)
RETURNING id;
