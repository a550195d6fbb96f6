-- Mirror rows in no listing of this run (and not flagged yet). $1 account
SELECT o.id
FROM ordens_servico o
WHERE o.account = $1
  AND NOT o.possibly_deleted
  AND NOT EXISTS (SELECT 1 FROM integrity_listed l WHERE l.id = o.id)
ORDER BY o.id;
