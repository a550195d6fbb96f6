-- Mirror rows whose status differs from the listing, or that were flagged possibly_deleted
-- and are listed again. Compares typed columns: the hash-first merge cannot see a damaged
-- situacao whose list payload is unchanged. $1 account
SELECT l.id, o.situacao AS old, l.situacao AS new, o.possibly_deleted
FROM integrity_listed l
JOIN ordens_servico o ON o.account = $1 AND o.id = l.id
WHERE o.situacao <> l.situacao OR o.possibly_deleted
ORDER BY l.id;
