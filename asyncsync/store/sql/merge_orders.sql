-- Upsert the staged orders (new, changed, or corrected by an integrity run); an observation
-- older than the row's never overwrites it. $1 account. Returns the ids written.
INSERT INTO ordens_servico AS o (
    account, id, numero, situacao, data_emissao, data_prevista, cliente_id, cliente_nome,
    valor, payload, list_hash, observed_at
)
SELECT $1, id, numero, situacao, data_emissao, data_prevista, cliente_id, cliente_nome,
       valor, payload, list_hash, observed_at
FROM stage_orders
ON CONFLICT (account, id) DO UPDATE SET
    numero = EXCLUDED.numero,
    situacao = EXCLUDED.situacao,
    data_emissao = EXCLUDED.data_emissao,
    data_prevista = EXCLUDED.data_prevista,
    cliente_id = EXCLUDED.cliente_id,
    cliente_nome = EXCLUDED.cliente_nome,
    valor = EXCLUDED.valor,
    payload = EXCLUDED.payload,
    list_hash = EXCLUDED.list_hash,
    observed_at = EXCLUDED.observed_at,
    -- The detail is stale when a tracked field moved. An order whose status a detail has
    -- already brought (it vanished from the open listings) is not refetched when the
    -- listing catches up. One flagged possibly deleted (its detail answered 404) and
    -- listed again needs its detail: the 404 left it without one.
    detail_stale = o.detail_stale OR o.possibly_deleted
        OR (o.numero, o.situacao, o.data_emissao, o.data_prevista, o.cliente_id,
            o.cliente_nome, o.valor)
           IS DISTINCT FROM
           (EXCLUDED.numero, EXCLUDED.situacao, EXCLUDED.data_emissao, EXCLUDED.data_prevista,
            EXCLUDED.cliente_id, EXCLUDED.cliente_nome, EXCLUDED.valor),
    possibly_deleted = false,
    -- The last change of a listed field: not a row written with nothing listed changed (a
    -- row listed again after a 404, an integrity correction of the same list item, or the
    -- listing catching up with the status a detail brought, its list_hash emptied by
    -- merge_details.sql: the change was stamped then; nor one whose hash alone differs, an
    -- older release's hashing of the same payload).
    updated_at = CASE
        WHEN (o.numero, o.situacao, o.data_emissao, o.data_prevista, o.cliente_id,
              o.cliente_nome, o.valor)
             IS NOT DISTINCT FROM
             (EXCLUDED.numero, EXCLUDED.situacao, EXCLUDED.data_emissao,
              EXCLUDED.data_prevista, EXCLUDED.cliente_id, EXCLUDED.cliente_nome,
              EXCLUDED.valor)
         AND (o.list_hash = EXCLUDED.list_hash
              OR o.payload = EXCLUDED.payload
              OR (o.list_hash = '\x'::bytea
                  AND o.payload - 'situacao' = EXCLUDED.payload - 'situacao'))
        THEN o.updated_at ELSE now() END,
    synced_at = now()
WHERE o.observed_at <= EXCLUDED.observed_at
RETURNING o.id;
