-- History rows for details that show a newer status than the mirror. $1 account
INSERT INTO ordem_status_history (account, id_os, status_antigo, status_novo, changed_at, source)
SELECT $1, s.id, o.situacao, s.situacao, s.observed_at, 'detail'
FROM stage_details s
JOIN ordens_servico o ON o.account = $1 AND o.id = s.id
WHERE o.situacao <> s.situacao AND s.observed_at >= o.observed_at;
