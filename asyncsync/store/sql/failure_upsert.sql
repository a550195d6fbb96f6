-- Orders or records that could not be imported (import_failures),
-- one row each, stamped with the caller's clock ($5).
-- $6 counts_as_attempt: an open row counts one more attempt (a retry, an import that failed
-- again); without it an open row stays as it is, because a listing shows the same broken
-- record at every run and that is not a new attempt. A resolved row is reopened at attempt 1,
-- unless a listing shows the same broken list item again ($7, the same error): then what
-- resolved it did not hold (a retry imported the order by its detail while its list item
-- stays broken) and the reopening counts one more attempt, so a record that never imports
-- still reaches manual review. A detail that fails again, once one imported, is a new
-- failure (a body cut short now and then, weeks apart): at attempt 1, its retries ahead.
-- A row a person ignored (ignorado_em) is left alone: it stays resolved. An attempt is
-- stamped with the caller's clock: the same stamp again is the same attempt, not another.
-- No write counts an attempt past the last ($8, section 6: at most 5, then a person
-- decides): an open row at manual review that fails again (an integrity check asking the
-- detail of an order in no listing) takes the newest error and answer, not a sixth
-- attempt, and one reopened by the same broken list item goes back to manual review.
-- dados_api keeps what earlier attempts stored (the list item) and takes the newest answer.
-- $1 account, $2 ids, $3 errors, $4 dados_api (JSON text or NULL), same order; ids distinct.
-- $7 listed: the failures are list items a listing read. $8 max attempts.
-- Returns the ids whose row was written.
INSERT INTO import_failures AS f (
    account, id_ordem, primeira_tentativa, ultima_tentativa, erro, tentativas, resolvido, dados_api
)
SELECT $1, t.id, $5::timestamptz, $5::timestamptz, t.erro, 1, false, t.dados::jsonb
FROM unnest($2::bigint[], $3::text[], $4::text[]) AS t (id, erro, dados)
ON CONFLICT (account, id_ordem) DO UPDATE SET
    ultima_tentativa = EXCLUDED.ultima_tentativa,
    erro = EXCLUDED.erro,
    tentativas = CASE WHEN coalesce(f.resolvido, false) AND $7::boolean
                           AND f.erro IS NOT DISTINCT FROM EXCLUDED.erro
                           THEN least(coalesce(f.tentativas, 0) + 1, $8::int)
                      WHEN coalesce(f.resolvido, false) THEN 1
                      -- the same attempt's statement again (its first answer was lost)
                      WHEN f.ultima_tentativa = EXCLUDED.ultima_tentativa THEN f.tentativas
                      -- at manual review: no automatic attempt counts any more
                      WHEN coalesce(f.tentativas, 1) >= $8::int THEN f.tentativas
                      ELSE coalesce(f.tentativas, 0) + 1 END,
    primeira_tentativa = CASE WHEN coalesce(f.resolvido, false)
                                   AND (NOT $7::boolean OR f.erro IS DISTINCT FROM EXCLUDED.erro)
                              THEN EXCLUDED.primeira_tentativa
                              ELSE f.primeira_tentativa END,
    resolvido = false,
    dados_api = CASE
        WHEN EXCLUDED.dados_api IS NULL THEN f.dados_api
        WHEN f.dados_api IS NULL OR coalesce(f.resolvido, false) THEN EXCLUDED.dados_api
        WHEN jsonb_typeof(f.dados_api) = 'object'
             AND (f.dados_api ? 'list_item' OR f.dados_api ? 'detail')
            THEN f.dados_api || EXCLUDED.dados_api
        -- a raw record stored by a listing: kept whole under 'original'
        ELSE jsonb_build_object('original', f.dados_api) || EXCLUDED.dados_api
    END
WHERE f.ignorado_em IS NULL AND (coalesce(f.resolvido, false) OR $6::boolean)
RETURNING f.id_ordem;
