-- A listing read the list items of open failures again: each row takes the newest list
-- item, so the status it is counted in (integrity_tracked_counts) is the one Tiny lists it
-- under now. An order the mirror lacks that moves (6 -> 7) was counted in 6 for as long as
-- its failure stayed open: 6 one too many, 7 one too few, and 7 listed again at every
-- cycle. Not an attempt: tentativas, ultima_tentativa and erro stay; what else a row keeps
-- (a detail's answer) stays beside the item. Ignored and resolved rows are failure_upsert's.
-- $1 account, $2 ids, $3 dados_api (a raw item, or {"list_item": ..., "listed_as": ...}).
WITH fresh AS (
    SELECT f.id_ordem,
           CASE WHEN jsonb_typeof(f.dados_api) = 'object'
                     AND f.dados_api ?| ARRAY['list_item', 'detail', 'original']
                THEN (f.dados_api - 'list_item' - 'listed_as' - 'original')
                     || CASE WHEN jsonb_typeof(t.dados::jsonb) = 'object'
                                  AND t.dados::jsonb ? 'list_item'
                             THEN t.dados::jsonb
                             ELSE jsonb_build_object('list_item', t.dados::jsonb) END
                ELSE t.dados::jsonb END AS dados_api
    FROM unnest($2::bigint[], $3::text[]) AS t (id, dados)
    JOIN import_failures f ON f.account = $1 AND f.id_ordem = t.id
    WHERE t.dados IS NOT NULL
      AND NOT coalesce(f.resolvido, false) AND f.ignorado_em IS NULL
)
UPDATE import_failures f
SET dados_api = fresh.dados_api
FROM fresh
WHERE f.account = $1 AND f.id_ordem = fresh.id_ordem
  AND f.dados_api IS DISTINCT FROM fresh.dados_api;
