-- Orders a listing has just brought into the mirror whose list item differs from the one
-- their open failure holds (fixed in Tiny): the failure is resolved, and the order's detail
-- is asked as any new order's. One whose failure holds the very list item listed now (an
-- integrity check's import whose detail failed), or none (a detail's failure), is left as
-- it is, for the retry mode or a person: resolved here, its detail failing again reopened
-- it at attempt 1, its first attempt forgotten, even from manual review (sweep K).
-- dados_api holds the list item under 'list_item', or under 'original', or is the list item
-- itself (an older release's listing).
-- $1 account, $2 ids (the batch's new rows), $3 now
UPDATE import_failures f
SET resolvido = true, ultima_tentativa = $3::timestamptz
FROM ordens_servico o
WHERE f.account = $1 AND f.id_ordem = ANY($2::bigint[]) AND NOT coalesce(f.resolvido, false)
  AND o.account = $1 AND o.id = f.id_ordem
  AND o.payload IS DISTINCT FROM (
      CASE WHEN jsonb_typeof(f.dados_api) <> 'object' THEN f.dados_api
           WHEN f.dados_api ? 'list_item' THEN f.dados_api -> 'list_item'
           WHEN f.dados_api ? 'original' THEN f.dados_api -> 'original'
           WHEN f.dados_api ? 'detail' THEN o.payload  -- none held: nothing says it changed
           ELSE f.dados_api END
  );
