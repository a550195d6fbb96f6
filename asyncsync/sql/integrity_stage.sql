-- Per-connection tables of an integrity run, emptied at commit: every id the API listed
-- (latest observation per id), and the full list rows of the orders whose status is corrected.
CREATE TEMP TABLE IF NOT EXISTS integrity_listed (
    id          bigint      PRIMARY KEY,
    situacao    smallint    NOT NULL,
    list_hash   bytea       NOT NULL,
    observed_at timestamptz NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS integrity_fix (
    id            bigint      PRIMARY KEY,
    numero        text,
    situacao      smallint    NOT NULL,
    data_emissao  date,
    data_prevista timestamp,
    cliente_id    bigint,
    cliente_nome  text,
    valor         numeric(14, 2),
    payload       jsonb       NOT NULL,
    list_hash     bytea       NOT NULL,
    observed_at   timestamptz NOT NULL
) ON COMMIT DELETE ROWS;
