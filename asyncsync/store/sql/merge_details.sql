-- Apply staged details: payload, conclusion date, and the status when the detail is newer.
-- detail_stale stays true when the listing changed after the detail was requested. $1 account
-- Returns the ids updated: a detail of an order the mirror lacks lands nowhere.
--
-- A status in dispute is the listing's: when the order's last change was a listing undoing
-- the very move this detail makes again (Tiny lists it as Finalizada, its detail says Em
-- andamento), the detail lands without its status. Applied, the row flipped at every cycle:
-- the detail moved it, the listing moved it back, two history rows and a detail request a
-- cycle, a reopening for reports, an order listed as concluded absent from
-- ordens_finalizadas (sweep L). The listing showing it in the detail's status settles it.
WITH disputed AS (
    SELECT s.id
    FROM stage_details s
    JOIN ordens_servico o ON o.account = $1 AND o.id = s.id
    WHERE o.situacao <> s.situacao AND s.observed_at >= o.observed_at
      AND coalesce((
          SELECT h.source = 'list' AND h.status_antigo = s.situacao AND h.status_novo = o.situacao
          FROM ordem_status_history h
          WHERE h.account = $1 AND h.id_os = s.id
          ORDER BY h.seq DESC
          LIMIT 1
      ), false)
)
UPDATE ordens_servico o SET
    detalhe = s.detalhe,
    detail_hash = s.detail_hash,
    data_conclusao = s.data_conclusao,
    situacao = CASE WHEN s.observed_at >= o.observed_at AND d.id IS NULL
                    THEN s.situacao ELSE o.situacao END,
    updated_at = CASE WHEN s.observed_at >= o.observed_at AND s.situacao <> o.situacao
                           AND d.id IS NULL
                      THEN now() ELSE o.updated_at END,
    observed_at = greatest(o.observed_at, s.observed_at),
    -- A status the listing did not show yet: the stored list item is out of date, so the
    -- next listing of this order must merge even if it looks like the old one (an order
    -- that went 6 -> 3 by detail and back to 6 lists exactly as before).
    list_hash = CASE WHEN s.observed_at >= o.observed_at AND s.situacao <> o.situacao
                          AND d.id IS NULL
                     THEN '\x'::bytea ELSE o.list_hash END,
    detail_stale = o.observed_at > s.observed_at,
    possibly_deleted = false,
    detail_synced_at = now(),
    synced_at = now()
FROM stage_details s
LEFT JOIN disputed d ON d.id = s.id
WHERE o.account = $1 AND o.id = s.id
RETURNING o.id;
