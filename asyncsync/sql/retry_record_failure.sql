-- One failed import attempt, stamped with the caller's clock ($3) so retry schedules can be
-- tested: one row per order, attempts counted, a resolved row reopened at attempt 1.
-- dados_api keeps what earlier attempts stored (the list item) and takes the newest answer.
-- $1 account, $2 id_ordem, $3 now, $4 erro, $5 dados_api (JSON object text, or NULL)
INSERT INTO import_failures AS f (
    account, id_ordem, primeira_tentativa, ultima_tentativa, erro, tentativas, resolvido, dados_api
)
VALUES ($1, $2, $3::timestamptz, $3::timestamptz, $4, 1, false, $5::jsonb)
ON CONFLICT (account, id_ordem) DO UPDATE SET
    ultima_tentativa = EXCLUDED.ultima_tentativa,
    erro = EXCLUDED.erro,
    tentativas = CASE WHEN f.resolvido THEN 1 ELSE coalesce(f.tentativas, 0) + 1 END,
    primeira_tentativa = CASE WHEN f.resolvido THEN EXCLUDED.primeira_tentativa
                              ELSE f.primeira_tentativa END,
    resolvido = false,
    dados_api = CASE
        WHEN EXCLUDED.dados_api IS NULL THEN f.dados_api
        WHEN f.dados_api IS NULL OR f.resolvido THEN EXCLUDED.dados_api
        WHEN jsonb_typeof(f.dados_api) = 'object'
             AND (f.dados_api ? 'list_item' OR f.dados_api ? 'detail')
            THEN f.dados_api || EXCLUDED.dados_api
        -- a raw record stored by the listing merge: kept whole under 'original'
        ELSE jsonb_build_object('original', f.dados_api) || EXCLUDED.dados_api
    END;
