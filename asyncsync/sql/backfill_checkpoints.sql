-- Checkpoints of the backfill partitions (keys backfill:YYYY-MM:S, values JSON
-- {"offset": n, "complete": bool}) of one account; the planner keeps those in its range.
-- $1 account
SELECT chave, valor FROM sync_metadata WHERE account = $1 AND chave LIKE 'backfill:%';
