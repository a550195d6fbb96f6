-- Seed section 6: one row per failing order, attempts counted, reopened on a new failure.
-- $1 account, $2 id_ordem, $3 erro, $4 dados_api (JSON text or NULL)
INSERT INTO import_failures AS f (account, id_ordem, erro, dados_api)
VALUES ($1, $2, $3, $4::jsonb)
ON CONFLICT (account, id_ordem) DO UPDATE SET
    ultima_tentativa = CURRENT_TIMESTAMP,
    erro = EXCLUDED.erro,
    tentativas = CASE WHEN f.resolvido THEN 1 ELSE f.tentativas + 1 END,
    primeira_tentativa = CASE WHEN f.resolvido THEN CURRENT_TIMESTAMP
                              ELSE f.primeira_tentativa END,
    resolvido = false,
    dados_api = coalesce(EXCLUDED.dados_api, f.dados_api);
