-- Give failures a fresh schedule, due at $3: one attempt counted, the last one a base delay
-- ago. Ignored rows come back. Synthetic (negative) ids cannot be fetched and are left.
-- $1 account, $2 ids (NULL: every failure left for manual review), $3 now,
-- $4 max attempts, $5 base delay (s). Returns the ids rearmed.
UPDATE import_failures
SET tentativas = 1,
    ultima_tentativa = $3::timestamptz - make_interval(secs => $5::float8),
    resolvido = false,
    ignorado_em = NULL
WHERE account = $1
  AND id_ordem > 0
  AND CASE WHEN $2::bigint[] IS NULL
           THEN NOT coalesce(resolvido, false) AND coalesce(tentativas, 1) >= $4
           ELSE id_ordem = ANY($2::bigint[])
                AND (NOT coalesce(resolvido, false) OR ignorado_em IS NOT NULL) END
RETURNING id_ordem;
