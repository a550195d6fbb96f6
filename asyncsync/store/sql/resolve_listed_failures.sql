-- Orders a listing read and merged (or found unchanged) whose mirror row holds a current
-- detail: what failed of them (a list item that did not parse, a detail that did not) is
-- fixed, since the mirror now holds them whole. This is how a failure past its last
-- attempt (never retried again) is resolved once the record is fixed in Tiny. A row whose
-- detail is stale waits for the detail: a landed detail resolves it (merge_details).
-- $1 account, $2 ids (the few of a batch with an open failure), $3 now
UPDATE import_failures f
SET resolvido = true, ultima_tentativa = $3::timestamptz
FROM ordens_servico o
WHERE f.account = $1 AND f.id_ordem = ANY($2::bigint[]) AND NOT coalesce(f.resolvido, false)
  AND o.account = $1 AND o.id = f.id_ordem AND NOT o.detail_stale AND NOT o.possibly_deleted
RETURNING f.id_ordem;
