-- One row per integrity run. $1 account, $2 started_at, $3 finished_at, $4 consistent, $5 report
INSERT INTO integrity_runs (account, started_at, finished_at, consistent, report)
VALUES ($1, $2, $3, $4, $5::jsonb)
RETURNING id;
