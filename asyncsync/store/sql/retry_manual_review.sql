-- Open failures no retry will fix: attempts used up, or no id to fetch (synthetic negative id).
-- $1 account, $2 max attempts
SELECT id_ordem, coalesce(tentativas, 1) AS tentativas, erro,
       primeira_tentativa, ultima_tentativa
FROM import_failures
WHERE account = $1
  AND NOT coalesce(resolvido, false)
  AND (coalesce(tentativas, 1) >= $2 OR id_ordem < 0)
ORDER BY id_ordem;
