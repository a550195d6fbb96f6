-- End this session once it has been idle this long (PostgreSQL 14 and later): a worker
-- frozen, not dead, must not keep its leases. $1 the timeout, e.g. '30s'
SELECT set_config('idle_session_timeout', $1, false);
