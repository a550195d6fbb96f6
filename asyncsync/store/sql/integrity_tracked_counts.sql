-- Open (or ignored) import failures of orders absent from the mirror, by the status their list
-- item showed.
-- The API lists them and counts them in paginacao.total; they are known, and the retry mode
-- owns them, so the pre-check adds them to the mirror's counts. The status is read from the
-- list item wherever a writer put it: integrity ('list_item'), retry ('original') or the
-- listing merge (the raw item itself). A list item whose own situacao does not say the
-- status it was listed under carries that status as 'listed_as'. A code no int holds
-- ("99999999999") is no status: not counted, never cast (the cast's error stopped every
-- cycle and integrity run for as long as the failure stayed open). $1 account
SELECT x.situacao, count(*) AS n
FROM import_failures f
CROSS JOIN LATERAL (
    SELECT substring(
        coalesce(
            f.dados_api ->> 'listed_as',
            f.dados_api -> 'list_item' ->> 'situacao',
            f.dados_api -> 'original' ->> 'situacao',
            f.dados_api ->> 'situacao'
        ) FROM '^\s*0*(\d{1,9})(?!\d)'
    )::int AS situacao
) x
WHERE f.account = $1
  AND (NOT coalesce(f.resolvido, false) OR f.ignorado_em IS NOT NULL)  -- ignored: still listed
  AND x.situacao IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM ordens_servico o WHERE o.account = $1 AND o.id = f.id_ordem)
GROUP BY x.situacao;
