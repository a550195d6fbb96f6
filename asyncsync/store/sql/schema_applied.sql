-- The fingerprint of the schema.sql this database had applied last (see schema_mark).
SELECT fingerprint FROM asyncsync_schema;
