-- $1 account
SELECT situacao, count(*) AS n FROM ordens_servico WHERE account = $1 GROUP BY situacao;
