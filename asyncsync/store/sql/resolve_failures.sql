-- Orders imported successfully, or deleted in Tiny (a retry's detail answered 404): their
-- open failures are resolved at the caller's clock.
-- $1 account, $2 ids, $3 now
UPDATE import_failures
SET resolvido = true, ultima_tentativa = $3::timestamptz
WHERE account = $1 AND id_ordem = ANY($2::bigint[]) AND NOT coalesce(resolvido, false);
