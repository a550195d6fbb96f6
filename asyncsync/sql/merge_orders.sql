-- Upsert the staged (new or changed) orders. $1 account
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
    detail_stale = true,
    possibly_deleted = false,
    updated_at = now(),
    synced_at = now();
