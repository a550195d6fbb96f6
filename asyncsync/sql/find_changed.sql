-- Hashes first: which staged ids are new, or changed and observed after what we hold.
-- $1 account. Returns (id, is_new). One writer per account (the advisory lock) makes this safe.
SELECT s.id, o.id IS NULL AS is_new
FROM stage_hash s
LEFT JOIN ordens_servico o ON o.account = $1 AND o.id = s.id
WHERE o.id IS NULL
   OR (o.list_hash <> s.hash AND s.observed_at >= o.observed_at);
