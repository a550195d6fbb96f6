-- A record or order that could not be imported (seed section 6). Recorded once: a row that
-- is already open stays as it is, because a listing shows the same broken record at every
-- run and that is not a new attempt (the retry mode counts attempts); a resolved row is
-- reopened at attempt 1. Returns the id when a row was written.
-- $1 account, $2 id_ordem, $3 erro, $4 dados_api (JSON text or NULL), $5 now
INSERT INTO import_failures AS f (
    account, id_ordem, primeira_tentativa, ultima_tentativa, erro, tentativas, resolvido, dados_api
)
VALUES ($1, $2, $5::timestamptz, $5::timestamptz, $3, 1, false, $4::jsonb)
ON CONFLICT (account, id_ordem) DO UPDATE SET
    primeira_tentativa = EXCLUDED.primeira_tentativa,
    ultima_tentativa = EXCLUDED.ultima_tentativa,
    erro = EXCLUDED.erro,
    tentativas = 1,
    resolvido = false,
    dados_api = coalesce(EXCLUDED.dados_api, f.dados_api)
WHERE f.resolvido
RETURNING id_ordem;
