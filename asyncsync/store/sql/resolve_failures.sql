-- Orders imported successfully: their open failures are resolved. $1 account, $2 ids
UPDATE import_failures
SET resolvido = true, ultima_tentativa = CURRENT_TIMESTAMP
WHERE account = $1 AND id_ordem = ANY($2::bigint[]) AND NOT resolvido;
