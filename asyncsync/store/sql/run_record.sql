-- One row of run history, and the mode's runs older than the history kept pruned.
-- $1 account, $2 mode, $3 invoked_as, $4 title, $5 started_at,
-- $6 finished_at, $7 outcome, $8 counts (JSON), $9 requests by endpoint (JSON),
-- $10 requests_total, $11 rate_limited, $12 retries, $13 quota_per_minute, $14 errors,
-- $15 report (JSON), $16 history kept (interval; NULL: every run is kept)
-- The report gets recorded_at, the database's clock when the row was written (the run's
-- own times are its host's): what a person did since is judged by one clock.
-- Idempotent: a statement tried again on a fresh connection (the first one's commit may
-- have landed before its answer was lost) returns the row it wrote instead of a second.
-- Pruning reads the (account, mode, started_at) index from the cutoff down: in steady
-- state a run that lands removes the one that aged out. The mode's newest successful run
-- and everything after it stay, whatever their age (the status shows them; the worker's
-- gauges read the mirror's census from the newest sync).
WITH written AS (
    SELECT id FROM sync_runs
    WHERE account = $1 AND mode = $2 AND started_at = $5 AND finished_at = $6
), pruned AS (
    DELETE FROM sync_runs s
    WHERE $16::interval IS NOT NULL
      AND s.account = $1 AND s.mode = $2
      AND s.started_at < now() - $16::interval
      AND s.started_at < (
          SELECT k.started_at FROM sync_runs k
          WHERE k.account = $1 AND k.mode = $2 AND k.outcome IN ('ok', 'attention')
          ORDER BY k.started_at DESC LIMIT 1)
), added AS (
    INSERT INTO sync_runs (
        account, mode, invoked_as, title, started_at, finished_at, outcome, counts, requests,
        requests_total, rate_limited, retries, quota_per_minute, errors, report
    )
    SELECT $1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10, $11, $12, $13, $14::text[],
           $15::jsonb || jsonb_build_object('recorded_at', now())
    WHERE NOT EXISTS (SELECT 1 FROM written)
    RETURNING id
)
SELECT id FROM added UNION ALL SELECT id FROM written LIMIT 1;
