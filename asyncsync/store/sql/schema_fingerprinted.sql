-- Whether the database has the table of schema.sql's fingerprint (installs older than it
-- do not; asked first, so that reading it raises no error, which would abort a transaction).
SELECT to_regclass('asyncsync_schema') IS NOT NULL;
