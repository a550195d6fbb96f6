-- Orders in the mirror per status, emitted inside a backfill range.
-- $1 account, $2 first day, $3 last day (inclusive)
SELECT situacao, count(*) AS n
FROM ordens_servico
WHERE account = $1 AND data_emissao BETWEEN $2 AND $3
GROUP BY situacao;
