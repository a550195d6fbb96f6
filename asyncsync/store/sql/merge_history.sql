-- History rows for staged orders whose status differs from the mirror (NULL old = first
-- seen); an observation older than the row's never records a change. $1 account, $2 source
INSERT INTO ordem_status_history (account, id_os, status_antigo, status_novo, changed_at, source)
SELECT $1, s.id, o.situacao, s.situacao, s.observed_at, $2
FROM stage_orders s
LEFT JOIN ordens_servico o ON o.account = $1 AND o.id = s.id
WHERE o.situacao IS DISTINCT FROM s.situacao
  AND (o.id IS NULL OR s.observed_at >= o.observed_at);
