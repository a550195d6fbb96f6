-- Name this session after what it runs, so a refused second run can say who holds the lock.
-- $1 name
SELECT set_config('application_name', $1, false);
