-- Orders waiting for a detail (those with an open import failure belong to the retry
-- mode, as in detail_backlog.sql). $1 account
SELECT count(*)
FROM ordens_servico o
WHERE o.account = $1 AND o.detail_stale
  AND NOT EXISTS (
      SELECT 1 FROM import_failures f
      WHERE f.account = $1 AND f.id_ordem = o.id AND NOT f.resolvido
  );
