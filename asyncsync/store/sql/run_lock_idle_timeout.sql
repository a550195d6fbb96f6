-- A one-shot run's lock session ends once silent for the run's statement timeout, or $1
-- milliseconds if that is longer (PostgreSQL 14 and later): a run frozen (SIGSTOP, a
-- Ctrl-Z in a terminal) must not keep its account from the workers for as long as the
-- freeze lasts. The run pings the session every 5 s. $1 the floor, in milliseconds
SELECT set_config(
    'idle_session_timeout',
    greatest(extract(epoch FROM current_setting('statement_timeout')::interval) * 1000, $1)
        ::bigint::text,
    false
);
