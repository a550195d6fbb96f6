-- Hashes first: which of the batch's ids are new, changed (and observed after what we
-- hold), or listed again after being flagged possibly deleted; with $5 (an integrity
-- correction) every id. $1 account, $2 ids, $3 hashes, $4 observed_at (parallel arrays,
-- one element per id), $5 force. Returns one row: the new ids and the changed ids, as two
-- arrays (cheaper to ship and decode than a row per id).
-- The LATERAL ... LIMIT 1 keeps the plan a nested loop of primary-key probes whatever the
-- statistics say: a batch costs the same against ten thousand rows or ten million, where a
-- hash join would read the whole table for every batch. One writer per account (the run
-- lock) makes this safe without row locks.
SELECT coalesce(array_agg(s.id) FILTER (WHERE o.id IS NULL), '{}') AS new_ids,
       coalesce(array_agg(s.id) FILTER (WHERE o.id IS NOT NULL), '{}') AS changed_ids
FROM unnest($2::bigint[], $3::bytea[], $4::timestamptz[]) AS s (id, hash, observed_at)
LEFT JOIN LATERAL (
    SELECT m.id, m.list_hash, m.observed_at, m.possibly_deleted
    FROM ordens_servico m
    WHERE m.account = $1 AND m.id = s.id
    LIMIT 1
) o ON true
WHERE $5::boolean
   OR o.id IS NULL
   OR o.possibly_deleted
   OR (o.list_hash <> s.hash AND s.observed_at >= o.observed_at);
