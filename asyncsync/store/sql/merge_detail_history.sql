-- History rows for details that show a newer status than the mirror, unless disputed (see
-- detail_disputed: the listing already undid that very move). $1 account
INSERT INTO ordem_status_history (account, id_os, status_antigo, status_novo, changed_at, source)
SELECT $1, s.id, o.situacao, s.situacao, s.observed_at, 'detail'
FROM stage_details s
JOIN ordens_servico o ON o.account = $1 AND o.id = s.id
WHERE o.situacao <> s.situacao AND s.observed_at >= o.observed_at
  AND NOT coalesce((
      -- The order's last change was a listing undoing this very move (a disputed status).
      SELECT h.source = 'list' AND h.status_antigo = s.situacao AND h.status_novo = o.situacao
      FROM ordem_status_history h
      WHERE h.account = $1 AND h.id_os = s.id
      ORDER BY h.seq DESC
      LIMIT 1
  ), false);
