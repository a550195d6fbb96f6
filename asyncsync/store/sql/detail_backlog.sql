-- Orders lacking a current detail, most useful first: open statuses, then recently changed,
-- then recent emission. Orders with an open import failure are left to the retry mode.
-- $1 account, $2 limit, $3 open statuses, $4 ids to skip
SELECT o.id
FROM ordens_servico o
WHERE o.account = $1 AND o.detail_stale
  AND NOT (o.id = ANY($4::bigint[]))
  AND NOT EXISTS (
      SELECT 1 FROM import_failures f
      WHERE f.account = $1 AND f.id_ordem = o.id AND NOT f.resolvido
  )
ORDER BY (o.situacao = ANY($3::smallint[])) DESC, o.updated_at DESC,
         o.data_emissao DESC NULLS LAST, o.id DESC
LIMIT $2;
