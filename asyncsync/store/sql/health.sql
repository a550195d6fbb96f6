-- When the account's mirror last finished a sync or a cycle. $1 account
SELECT max(updated_at) FROM sync_metadata
WHERE account = $1 AND chave IN ('full_sync', 'incremental');
