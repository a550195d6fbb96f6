-- End this worker's former lease session, which stopped answering (its backend frozen, or
-- its connection cut off without a reset): it still holds the run locks of the accounts
-- it leased, and would keep them until it wakes up or the server notices. A backend that
-- is stopped ends when it is woken. $1 its pid, $2 the worker's application_name (only a
-- session of this worker is ended). Returns whether it was signalled.
SELECT coalesce(bool_or(pg_terminate_backend(pid)), false)
FROM pg_stat_activity
WHERE pid = $1 AND application_name = $2 AND pid <> pg_backend_pid();
