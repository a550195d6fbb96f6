-- Remember which schema.sql was just applied: a start that finds its own fingerprint here
-- does not apply it again. $1 fingerprint (sha256 of schema.sql)
INSERT INTO asyncsync_schema (fingerprint) VALUES ($1)
ON CONFLICT (singleton) DO UPDATE SET fingerprint = excluded.fingerprint, applied_at = now();
