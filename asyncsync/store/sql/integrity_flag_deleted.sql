-- Orders in no listing whose detail did not prove them alive: flagged, never deleted.
-- $1 account, $2 ids. Returns the ids flagged.
UPDATE ordens_servico
SET possibly_deleted = true, detail_stale = false
WHERE account = $1 AND id = ANY($2::bigint[]) AND NOT possibly_deleted
RETURNING id;
