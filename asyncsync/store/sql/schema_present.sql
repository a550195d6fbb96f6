-- Whether schema.sql's tables and view are all there (catalog lookups: no lock taken on
-- them, unlike applying schema.sql again, whose CREATE INDEX IF NOT EXISTS waits for every
-- write in flight on the table even when the index exists).
SELECT to_regclass('ordens_servico') IS NOT NULL
   AND to_regclass('ordem_status_history') IS NOT NULL
   AND to_regclass('sync_metadata') IS NOT NULL
   AND to_regclass('import_failures') IS NOT NULL
   AND to_regclass('tiny_tokens') IS NOT NULL
   AND to_regclass('integrity_runs') IS NOT NULL
   AND to_regclass('sync_runs') IS NOT NULL
   AND to_regclass('ordens_finalizadas') IS NOT NULL
   AND to_regclass('accounts') IS NOT NULL
   AND to_regclass('worker_settings') IS NOT NULL;
