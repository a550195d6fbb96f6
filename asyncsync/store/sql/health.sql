-- How long ago, by the database's clock that stamped it, the account's mirror last
-- finished a sync or a cycle (NULL: never). An age, not the moment: the host compares it
-- with its own clock, which may be off the database's by more than the freshness limit.
-- $1 account
SELECT clock_timestamp() - max(updated_at) FROM sync_metadata
WHERE account = $1 AND chave IN ('full_sync', 'incremental');
