-- Orders in the mirror per status, the possibly-deleted left out. $1 account
SELECT situacao, count(*) AS n
FROM ordens_servico
WHERE account = $1 AND NOT possibly_deleted
GROUP BY situacao;
