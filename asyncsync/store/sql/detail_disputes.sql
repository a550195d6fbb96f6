-- A status in dispute is the listing's: a staged detail newer than its row, whose status the
-- order's last change (a listing's) undid, the very move it makes again (Tiny lists it as
-- Finalizada, its detail says Em andamento), takes the row's status, so it lands without
-- its own: no history row, the list hash kept. Applied, the row flipped at every cycle: the
-- detail moved it, the listing moved it back, two history rows and a detail request a
-- cycle, a reopening for reports, an order listed as concluded absent from
-- ordens_finalizadas (sweep L). The listing showing it in the detail's status settles it.
-- Run before merge_detail_history and merge_details. $1 account
UPDATE stage_details s
SET situacao = o.situacao
FROM ordens_servico o
WHERE o.account = $1 AND o.id = s.id
  AND o.situacao <> s.situacao AND s.observed_at >= o.observed_at
  AND coalesce((
      SELECT h.source = 'list' AND h.status_antigo = s.situacao AND h.status_novo = o.situacao
      FROM ordem_status_history h
      WHERE h.account = $1 AND h.id_os = s.id
      ORDER BY h.seq DESC
      LIMIT 1
  ), false);
