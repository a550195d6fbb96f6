-- The status corrections of an integrity run, in the history. $1 account
INSERT INTO ordem_status_history (account, id_os, status_antigo, status_novo, changed_at, source)
SELECT $1, f.id, o.situacao, f.situacao, f.observed_at, 'integrity'
FROM stage_orders f
JOIN ordens_servico o ON o.account = $1 AND o.id = f.id
WHERE o.situacao <> f.situacao AND f.observed_at >= o.observed_at;
