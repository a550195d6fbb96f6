-- A list item that cannot be read. Recorded once: a row already open is left as it is, since
-- the listing shows the item at every run and that is not a new import attempt.
-- $1 account, $2 id_ordem, $3 now, $4 erro, $5 dados_api. Returns the id when written.
INSERT INTO import_failures AS f (
    account, id_ordem, primeira_tentativa, ultima_tentativa, erro, tentativas, resolvido, dados_api
)
VALUES ($1, $2, $3::timestamptz, $3::timestamptz, $4, 1, false, $5::jsonb)
ON CONFLICT (account, id_ordem) DO UPDATE SET
    primeira_tentativa = EXCLUDED.primeira_tentativa,
    ultima_tentativa = EXCLUDED.ultima_tentativa,
    erro = EXCLUDED.erro,
    tentativas = 1,
    resolvido = false,
    dados_api = EXCLUDED.dados_api
WHERE f.resolvido
RETURNING id_ordem;
