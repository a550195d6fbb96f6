-- Every sync_metadata entry of one account whose key starts with $2 (backfill checkpoints
-- are keyed backfill:YYYY-MM:S, values JSON {"offset": n, "complete": bool}).
-- $1 account, $2 prefix
SELECT chave, valor FROM sync_metadata
WHERE account = $1 AND left(chave, length($2)) = $2;
