-- Whether asyncsync ever wrote here: its mirror's table, of this release's schema or an
-- older one's (status and health, which read only, tell the two apart when a table is missing).
SELECT to_regclass('ordens_servico') IS NOT NULL;
