-- Mirror rows per status, leaving out rows flagged possibly_deleted. $1 account
SELECT situacao, count(*) AS n
FROM ordens_servico
WHERE account = $1 AND NOT possibly_deleted
GROUP BY situacao;
