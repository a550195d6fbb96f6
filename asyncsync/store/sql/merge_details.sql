-- Apply staged details: payload, conclusion date, and the status when the detail is newer.
-- detail_stale stays true when the listing changed after the detail was requested. $1 account
-- Returns the ids updated: a detail of an order the mirror lacks lands nowhere.
UPDATE ordens_servico o SET
    detalhe = s.detalhe,
    detail_hash = s.detail_hash,
    data_conclusao = s.data_conclusao,
    situacao = CASE WHEN s.observed_at >= o.observed_at THEN s.situacao ELSE o.situacao END,
    updated_at = CASE WHEN s.observed_at >= o.observed_at AND s.situacao <> o.situacao
                      THEN now() ELSE o.updated_at END,
    observed_at = greatest(o.observed_at, s.observed_at),
    -- A status the listing did not show yet: the stored list item is out of date, so the
    -- next listing of this order must merge even if it looks like the old one (an order
    -- that went 6 -> 3 by detail and back to 6 lists exactly as before).
    list_hash = CASE WHEN s.observed_at >= o.observed_at AND s.situacao <> o.situacao
                     THEN '\x'::bytea ELSE o.list_hash END,
    detail_stale = o.observed_at > s.observed_at,
    possibly_deleted = false,
    detail_synced_at = now(),
    synced_at = now()
FROM stage_details s
WHERE o.account = $1 AND o.id = s.id
RETURNING o.id;
