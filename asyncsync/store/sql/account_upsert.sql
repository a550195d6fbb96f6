-- Add an account, or change the one with this key. $1 key, $2 api_base_url, $3 token_url,
-- $4 client_id, $5 client_secret_env, $6 client_secret_file, $7 client_secret,
-- $8 refresh_token_env, $9 refresh_token_file, $10 quota_share, $11 enabled.
-- Returns whether the row is new, and whether it is enabled. A row replaced keeps its
-- enabled state: re-adding a disabled account does not start it (accounts enable does).
INSERT INTO accounts (key, api_base_url, token_url, client_id, client_secret_env,
                      client_secret_file, client_secret, refresh_token_env, refresh_token_file,
                      quota_share, enabled)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (key) DO UPDATE SET
    api_base_url = EXCLUDED.api_base_url,
    token_url = EXCLUDED.token_url,
    client_id = EXCLUDED.client_id,
    client_secret_env = EXCLUDED.client_secret_env,
    client_secret_file = EXCLUDED.client_secret_file,
    client_secret = EXCLUDED.client_secret,
    refresh_token_env = EXCLUDED.refresh_token_env,
    refresh_token_file = EXCLUDED.refresh_token_file,
    quota_share = EXCLUDED.quota_share,
    updated_at = now()
RETURNING (xmax = 0) AS inserted, enabled;
