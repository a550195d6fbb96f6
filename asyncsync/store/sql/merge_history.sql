-- History rows for staged orders whose status differs from the mirror (NULL old = first
-- seen); an observation older than the row's never records a change. $1 account, $2 source
-- (LATERAL ... LIMIT 1: primary-key probes per staged row, never a scan of the mirror.)
INSERT INTO ordem_status_history (account, id_os, status_antigo, status_novo, changed_at, source)
SELECT $1, s.id, o.situacao, s.situacao, s.observed_at, $2
FROM stage_orders s
LEFT JOIN LATERAL (
    SELECT m.id, m.situacao, m.observed_at
    FROM ordens_servico m
    WHERE m.account = $1 AND m.id = s.id
    LIMIT 1
) o ON true
WHERE o.situacao IS DISTINCT FROM s.situacao
  AND (o.id IS NULL OR s.observed_at >= o.observed_at);
