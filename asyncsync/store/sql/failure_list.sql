-- Import failures of an account in one state, most recent attempt first.
-- state: 'pending' (a retry will come), 'review' (left for a person), 'ignored',
-- 'resolved', 'open' (pending or review), 'all'.
-- $1 account, $2 state, $3 max attempts, $4 base delay (s), $5 factor, $6 limit
SELECT id_ordem, tentativas, erro, primeira_tentativa, ultima_tentativa, state,
       CASE WHEN state = 'pending' THEN
           (ultima_tentativa
            + make_interval(secs => $4::float8 * power($5::float8, tentativas - 1)))::timestamptz
       END AS next_due_at
FROM (
    SELECT id_ordem, coalesce(tentativas, 1) AS tentativas, erro, primeira_tentativa,
           ultima_tentativa,
           CASE WHEN ignorado_em IS NOT NULL THEN 'ignored'
                WHEN coalesce(resolvido, false) THEN 'resolved'
                WHEN coalesce(tentativas, 1) >= $3 OR id_ordem < 0 THEN 'review'
                ELSE 'pending' END AS state
    FROM import_failures
    WHERE account = $1
) f
WHERE $2 = 'all' OR state = $2 OR ($2 = 'open' AND state IN ('pending', 'review'))
ORDER BY ultima_tentativa DESC NULLS LAST, id_ordem
LIMIT $6;
