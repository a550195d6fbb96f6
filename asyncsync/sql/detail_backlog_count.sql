-- $1 account
SELECT count(*) FROM ordens_servico WHERE account = $1 AND detail_stale;
