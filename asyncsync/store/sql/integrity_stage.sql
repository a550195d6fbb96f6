-- Per-connection tables of an integrity run, emptied at commit: every id the API listed
-- (latest observation per id). Corrected rows go through the sink's stage_orders.
CREATE TEMP TABLE IF NOT EXISTS integrity_listed (
    id          bigint      PRIMARY KEY,
    situacao    smallint    NOT NULL,
    list_hash   bytea       NOT NULL,
    observed_at timestamptz NOT NULL
) ON COMMIT DELETE ROWS;
