-- Every account's row, by key. (no parameters)
SELECT key, api_base_url, token_url, client_id, client_secret_env, client_secret_file,
       client_secret, refresh_token_env, refresh_token_file, quota_share, enabled
FROM accounts ORDER BY key;
