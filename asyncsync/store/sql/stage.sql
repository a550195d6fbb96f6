-- Per-connection staging tables, emptied at every commit. (The hashes of a batch travel
-- as arrays: see find_changed.sql.)
CREATE TEMP TABLE IF NOT EXISTS stage_orders (
    id            bigint      NOT NULL,
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
CREATE TEMP TABLE IF NOT EXISTS stage_details (
    id             bigint      NOT NULL,
    situacao       smallint    NOT NULL,
    data_conclusao timestamp,
    detalhe        jsonb       NOT NULL,
    detail_hash    bytea       NOT NULL,
    observed_at    timestamptz NOT NULL
) ON COMMIT DELETE ROWS;
