-- Whether the backend $1 (a former lease session, ended for its silence) is still there,
-- holding its locks.
SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1);
