-- Which ids of one listed page disagree with the mirror: absent, another status, or flagged
-- possibly_deleted. Only these list rows are kept in memory for the fixes.
-- $1 account, $2 ids, $3 statuses (same order)
SELECT t.id
FROM unnest($2::bigint[], $3::smallint[]) AS t (id, situacao)
LEFT JOIN ordens_servico o ON o.account = $1 AND o.id = t.id
WHERE o.id IS NULL OR o.situacao <> t.situacao OR o.possibly_deleted;
