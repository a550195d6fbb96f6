-- A person ignores failures: resolved, stamped, and never reopened by a listing.
-- $1 account, $2 ids (NULL: every failure left for manual review), $3 now, $4 max attempts.
-- Returns the ids ignored.
UPDATE import_failures
SET resolvido = true, ignorado_em = $3::timestamptz
WHERE account = $1
  AND NOT coalesce(resolvido, false)
  AND CASE WHEN $2::bigint[] IS NULL
           THEN coalesce(tentativas, 1) >= $4 OR id_ordem < 0
           ELSE id_ordem = ANY($2::bigint[]) END
RETURNING id_ordem;
