-- $1 account, $2 chave
SELECT valor FROM sync_metadata WHERE account = $1 AND chave = $2;
