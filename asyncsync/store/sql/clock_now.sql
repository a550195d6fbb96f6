-- The database's clock: the ceiling of the moment an observation may claim.
SELECT clock_timestamp();
