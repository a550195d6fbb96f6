-- Open import failures of orders absent from the mirror (see integrity_tracked_counts): the
-- missing orders a pre-check whose totals agree leaves to the retry mode, or to a person.
-- $1 account
SELECT f.id_ordem
FROM import_failures f
WHERE f.account = $1 AND NOT coalesce(f.resolvido, false)
  AND NOT EXISTS (SELECT 1 FROM ordens_servico o WHERE o.account = $1 AND o.id = f.id_ordem)
ORDER BY f.id_ordem;
