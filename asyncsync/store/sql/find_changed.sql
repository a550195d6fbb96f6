-- Hashes first: which staged ids are new, changed (and observed after what we hold), or
-- listed again after being flagged possibly deleted; with $2 (an integrity correction)
-- every staged id. $1 account, $2 force. Returns (id, is_new).
-- One writer per account (the run lock) makes this safe without row locks.
SELECT s.id, o.id IS NULL AS is_new
FROM stage_hash s
LEFT JOIN ordens_servico o ON o.account = $1 AND o.id = s.id
WHERE $2::boolean
   OR o.id IS NULL
   OR o.possibly_deleted
   OR (o.list_hash <> s.hash AND s.observed_at >= o.observed_at);
