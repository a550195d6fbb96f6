-- Correct rows from their list item: status, list fields, payload, hash and observed_at, so
-- the next sync finds them unchanged. The detail goes stale only if the listing changed.
-- $1 account. Returns the ids corrected.
UPDATE ordens_servico o SET
    numero = f.numero,
    situacao = f.situacao,
    data_emissao = f.data_emissao,
    data_prevista = f.data_prevista,
    cliente_id = f.cliente_id,
    cliente_nome = f.cliente_nome,
    valor = f.valor,
    payload = f.payload,
    list_hash = f.list_hash,
    observed_at = f.observed_at,
    detail_stale = o.detail_stale OR o.list_hash <> f.list_hash,
    possibly_deleted = false,
    updated_at = now(),
    synced_at = now()
FROM stage_orders f
WHERE o.account = $1 AND o.id = f.id AND f.observed_at >= o.observed_at
RETURNING o.id;
