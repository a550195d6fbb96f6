-- Tables (or views) by the names of schema.sql's that asyncsync did not create: every one
-- of its own has the column named here (account; key for the accounts table). A planning
-- document's import_failures, an older script's ordens_servico: schema.sql fails on them
-- ("column account does not exist"). Looked up through the search path, as schema.sql is.
SELECT t.name
FROM (VALUES ('ordens_servico', 'account'), ('ordem_status_history', 'account'),
             ('sync_metadata', 'account'), ('import_failures', 'account'),
             ('tiny_tokens', 'account'), ('integrity_runs', 'account'),
             ('sync_runs', 'account'), ('ordens_finalizadas', 'account'),
             ('accounts', 'key'), ('worker_settings', 'worker')) AS t(name, own_column)
WHERE to_regclass(t.name) IS NOT NULL
  AND NOT EXISTS (
      SELECT 1 FROM pg_attribute a
      WHERE a.attrelid = to_regclass(t.name) AND a.attname = t.own_column AND NOT a.attisdropped
  )
ORDER BY t.name;
