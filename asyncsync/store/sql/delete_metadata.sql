-- $1 account, $2 chave
DELETE FROM sync_metadata WHERE account = $1 AND chave = $2;
