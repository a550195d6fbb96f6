-- Orders whose detail answered 404: flagged, never deleted. $1 account, $2 ids
UPDATE ordens_servico
SET possibly_deleted = true, detail_stale = false
WHERE account = $1 AND id = ANY($2::bigint[]);
