-- History rows for staged orders whose status differs from the mirror (NULL old = first seen).
-- $1 account
INSERT INTO ordem_status_history (account, id_os, status_antigo, status_novo, changed_at, source)
SELECT $1, s.id, o.situacao, s.situacao, s.observed_at, 'list'
FROM stage_orders s
LEFT JOIN ordens_servico o ON o.account = $1 AND o.id = s.id
WHERE o.situacao IS DISTINCT FROM s.situacao;
