-- asyncsync schema: the PostgreSQL mirror of Tiny service orders.
-- Applied idempotently by `asyncsync --mode migrate`, and at the start of a mode that
-- writes when asyncsync_schema (at the end) names another version of this file; every
-- statement is safe to run again. Every table but asyncsync_schema and worker_settings
-- is keyed by `account` so that several Tiny accounts can share one database; a
-- single-account install uses 'default'.

-- One row per service order: typed columns for reports, raw API payloads for everything else.
CREATE TABLE IF NOT EXISTS ordens_servico (
    account          text        NOT NULL DEFAULT 'default',
    id               bigint      NOT NULL,
    numero           text,
    situacao         smallint    NOT NULL CHECK (situacao BETWEEN 0 AND 7),
    data_emissao     date,
    data_prevista    timestamp,
    data_conclusao   timestamp,
    cliente_id       bigint,
    cliente_nome     text,
    valor            numeric(14, 2),
    payload          jsonb       NOT NULL,      -- the raw list item
    detalhe          jsonb,                     -- the raw GET /ordem-servico/{id} answer
    list_hash        bytea       NOT NULL,      -- blake2b-128 of payload: unchanged rows cost nothing
    detail_hash      bytea,
    observed_at      timestamptz NOT NULL,      -- when the API answer behind this row was requested
    detail_stale     boolean     NOT NULL DEFAULT true,  -- listing changed since the last detail
    possibly_deleted boolean     NOT NULL DEFAULT false, -- Tiny answered 404 for it, or no listing showed it (integrity)
    first_seen       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),  -- last change of any listed field
    synced_at        timestamptz NOT NULL DEFAULT now(),  -- last write from the API (list or detail)
    detail_synced_at timestamptz,
    PRIMARY KEY (account, id)
);
CREATE INDEX IF NOT EXISTS idx_ordens_servico_situacao_data
    ON ordens_servico (account, situacao, data_emissao);
-- The enrichment pass reads "what lacks a detail", open orders first.
CREATE INDEX IF NOT EXISTS idx_ordens_servico_detail_stale
    ON ordens_servico (account, situacao) WHERE detail_stale;

-- Every observed status change; status_antigo is NULL for the first sighting of an order.
-- Keyed by order, then seq (the order of observation): the one index serves the history
-- of an order and costs a first load one index insertion per row, not two.
CREATE TABLE IF NOT EXISTS ordem_status_history (
    seq           bigserial   NOT NULL,
    account       text        NOT NULL DEFAULT 'default',
    id_os         bigint      NOT NULL,
    status_antigo smallint,
    status_novo   smallint    NOT NULL,
    changed_at    timestamptz NOT NULL DEFAULT now(),  -- when the change was observed
    source        text        NOT NULL DEFAULT 'list', -- list | detail | integrity
    PRIMARY KEY (account, id_os, seq)
);
-- Installs made before 2026-12-06 keyed the history by seq alone, with a second index by
-- order: rekey them once (the table is rewritten into the new index; history is kept).
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'ordem_status_history'::regclass AND contype = 'p'
          AND cardinality(conkey) = 1
    ) THEN
        ALTER TABLE ordem_status_history
            DROP CONSTRAINT ordem_status_history_pkey,
            ADD CONSTRAINT ordem_status_history_pkey PRIMARY KEY (account, id_os, seq);
    END IF;
END
$$;
DROP INDEX IF EXISTS idx_ordem_status_history_os;

-- Cursors, checkpoints and per-status state (values are JSON text).
CREATE TABLE IF NOT EXISTS sync_metadata (
    account    text        NOT NULL DEFAULT 'default',
    chave      text        NOT NULL,
    valor      text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, chave)
);

-- The integrity-check failure table, plus the account key. id_ordem is bigint like
-- ordens_servico.id; a record that arrived without an id gets a stable negative id.
CREATE TABLE IF NOT EXISTS import_failures (
    account            text      NOT NULL DEFAULT 'default',
    id_ordem           bigint    NOT NULL,
    primeira_tentativa timestamp DEFAULT CURRENT_TIMESTAMP,
    ultima_tentativa   timestamp DEFAULT CURRENT_TIMESTAMP,
    erro               text,
    tentativas         integer   DEFAULT 1,
    resolvido          boolean   DEFAULT FALSE,
    dados_api          jsonb,    -- the API's raw answer, for debugging
    PRIMARY KEY (account, id_ordem)
);
CREATE INDEX IF NOT EXISTS idx_import_failures_resolvido ON import_failures (resolvido);
CREATE INDEX IF NOT EXISTS idx_import_failures_tentativas ON import_failures (tentativas);
-- Beside the document's two: the open failures of an account, by their last attempt, in the
-- queries' own words (NOT coalesce(resolvido, false)). Resolved rows are never deleted, so
-- without it retry_due, retry_pending and retry_manual_review read every failure an account
-- ever had (1M rows, 20 accounts, 2 % open: retry_due 14.4 ms against 1.0;
-- bench/bench_failures.py).
CREATE INDEX IF NOT EXISTS idx_import_failures_account_open
    ON import_failures (account, ultima_tentativa) WHERE NOT coalesce(resolvido, false);

-- The newest OAuth tokens of each account, shared by every process (refresh tokens rotate).
CREATE TABLE IF NOT EXISTS tiny_tokens (
    account           text        PRIMARY KEY,
    access_token      text,
    access_expires_at timestamptz,
    refresh_token     text        NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- When the access token was asked for (its lifetime sets when to refresh it), when the
-- refresh token was granted and when Tiny said it lapses (serve keeps it alive).
ALTER TABLE tiny_tokens ADD COLUMN IF NOT EXISTS access_issued_at timestamptz;
ALTER TABLE tiny_tokens ADD COLUMN IF NOT EXISTS refresh_expires_at timestamptz;
ALTER TABLE tiny_tokens ADD COLUMN IF NOT EXISTS refresh_issued_at timestamptz;

-- One row per integrity run, so runs can be compared over time.
CREATE TABLE IF NOT EXISTS integrity_runs (
    id          bigserial   PRIMARY KEY,
    account     text        NOT NULL DEFAULT 'default',
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    consistent  boolean,    -- NULL: unknown (a run stopped before it found anything)
    report      jsonb       NOT NULL
);
-- Installs made before 2026-12-07 stored a stopped run as inconsistent (NOT NULL).
ALTER TABLE integrity_runs ALTER COLUMN consistent DROP NOT NULL;

-- Every run of every mode (and every serve cycle): the run report, persisted. The history
-- `asyncsync status` reads; integrity_runs above is kept for existing readers.
CREATE TABLE IF NOT EXISTS sync_runs (
    id               bigserial   PRIMARY KEY,
    account          text        NOT NULL DEFAULT 'default',
    mode             text        NOT NULL,  -- what ran: sync, backfill, integrity, retry
    invoked_as       text        NOT NULL,  -- the command that ran it: serve, sync, failures...
    title            text        NOT NULL DEFAULT '',
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz NOT NULL,
    outcome          text        NOT NULL CHECK (outcome IN ('ok', 'attention', 'interrupted', 'failed')),
    counts           jsonb       NOT NULL DEFAULT '{}',
    requests         jsonb       NOT NULL DEFAULT '{}',  -- API requests by endpoint
    requests_total   integer     NOT NULL DEFAULT 0,
    rate_limited     integer     NOT NULL DEFAULT 0,     -- 429 answers
    retries          integer     NOT NULL DEFAULT 0,
    quota_per_minute integer,                            -- the pace the client kept
    errors           text[]      NOT NULL DEFAULT '{}',
    report           jsonb       NOT NULL                -- the whole run report
);
CREATE INDEX IF NOT EXISTS idx_sync_runs_account_mode
    ON sync_runs (account, mode, started_at DESC);

-- A failure a person chose to ignore stays resolved, even when a listing shows it again.
ALTER TABLE import_failures ADD COLUMN IF NOT EXISTS ignorado_em timestamptz;

-- Where reports read conclusions from: the API's dataConclusao, else the last observed
-- change into 3 - Finalizada (NULL when the order was first seen already finalized). An
-- order reopened and finalized again was concluded by its last move into 3: a
-- dataConclusao older than the last observed move out of 3 is the earlier conclusion
-- (Tiny may keep it), so the history's last move into 3 is reported instead. Orders
-- flagged possibly deleted are left out, as the status and the gauges leave them out.
CREATE OR REPLACE VIEW ordens_finalizadas AS
SELECT o.account,
       o.id,
       o.numero,
       o.cliente_nome,
       o.valor,
       o.data_emissao,
       CASE WHEN o.data_conclusao IS NOT NULL
                 AND (h.last_reopened IS NULL OR o.data_conclusao >= h.last_reopened)
            THEN o.data_conclusao
            ELSE h.last_finalizada END AS data_conclusao,
       CASE WHEN o.data_conclusao IS NOT NULL
                 AND (h.last_reopened IS NULL OR o.data_conclusao >= h.last_reopened)
            THEN 'api'
            WHEN h.last_finalizada IS NOT NULL THEN 'history' END AS conclusao_fonte
FROM ordens_servico o
LEFT JOIN LATERAL (
    SELECT (max(changed_at) FILTER (
                WHERE status_novo = 3
                  AND status_antigo IS NOT NULL  -- first seen already finalized: unknown
            ) AT TIME ZONE 'America/Sao_Paulo') AS last_finalizada,
           (max(changed_at) FILTER (WHERE status_antigo = 3)
                AT TIME ZONE 'America/Sao_Paulo') AS last_reopened
    FROM ordem_status_history
    WHERE account = o.account AND id_os = o.id
) h ON true
WHERE o.situacao = 3
  AND NOT o.possibly_deleted;  -- gone from Tiny (a 404): kept in the mirror, not reported

-- The Tiny accounts this database mirrors (`asyncsync accounts add`), read by every worker.
-- Secrets are named by reference: an environment variable every worker reads, or a file
-- (a container secret); client_secret holds one in clear only when the operator opted in.
-- With no row at all, a single-account install runs as before: its account is the one of
-- the flags and environment (`default`).
CREATE TABLE IF NOT EXISTS accounts (
    key                text        PRIMARY KEY,
    api_base_url       text        NOT NULL,
    token_url          text        NOT NULL,
    client_id          text        NOT NULL,
    client_secret_env  text,
    client_secret_file text,
    client_secret      text,
    refresh_token_env  text,
    refresh_token_file text,
    quota_share        real        NOT NULL DEFAULT 1.0 CHECK (quota_share > 0 AND quota_share <= 1),
    enabled            boolean     NOT NULL DEFAULT true,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (num_nonnulls(client_secret_env, client_secret_file, client_secret) = 1)
);
-- The key rule of `asyncsync accounts add` (1 to 64 letters, digits, '.', '_', '-'), kept
-- by the table too: a row inserted by hand with another key stopped every command that
-- reads the table. NOT VALID: an older install's rows are not checked, new ones are.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'accounts'::regclass AND conname = 'accounts_key_rule'
    ) THEN
        ALTER TABLE accounts ADD CONSTRAINT accounts_key_rule
            CHECK (key ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$') NOT VALID;
    END IF;
END
$$;

-- What each `asyncsync serve` worker runs with, of the settings every worker of the database
-- must share (README "Many accounts, many workers"): each one refreshes its row every 30 s
-- and warns when a worker seen within two minutes says another figure. Rows of workers
-- silent for a day are deleted.
CREATE TABLE IF NOT EXISTS worker_settings (
    worker               text             PRIMARY KEY,  -- asyncsync worker host:pid
    interval_s           double precision NOT NULL,
    integrity_interval_s double precision NOT NULL,
    background_slots     integer          NOT NULL,
    heartbeat_s          double precision NOT NULL,
    seen_at              timestamptz      NOT NULL DEFAULT now()
);

-- Which schema.sql this database had applied last (sha256 of the file): a start that finds
-- its own skips applying it again, whose CREATE INDEX IF NOT EXISTS waits for every write
-- in flight on the table. `asyncsync migrate` applies it whatever this says.
CREATE TABLE IF NOT EXISTS asyncsync_schema (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    fingerprint text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
-- Installs made before 2026-12-06 did not mark a --simulator demo's account (the
-- sync_metadata key 'simulator_demo', asyncsync/runtime): after the upgrade the demo refused
-- its own earlier demo as a real Tiny account's. The refresh tokens the bundled simulator
-- issues say whose they are (Tiny's are JWTs): such an install's first apply (no
-- fingerprint yet) marks the accounts holding one.
INSERT INTO sync_metadata (account, chave, valor)
SELECT account, 'simulator_demo', 'true' FROM tiny_tokens
WHERE refresh_token LIKE 'sim-refresh-%' AND NOT EXISTS (SELECT FROM asyncsync_schema)
ON CONFLICT (account, chave) DO NOTHING;
-- Every role may read it: one granted rights on the tables alone before this table existed
-- (GRANT ... ON ALL TABLES covers the tables there then) must still find the schema applied.
GRANT SELECT ON asyncsync_schema TO PUBLIC;
