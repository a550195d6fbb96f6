-- $1 account, $2 refresh_token, $3 access_token, $4 access_expires_at
INSERT INTO tiny_tokens (account, refresh_token, access_token, access_expires_at, updated_at)
VALUES ($1, $2, $3, $4, now())
ON CONFLICT (account) DO UPDATE SET
    refresh_token = EXCLUDED.refresh_token,
    access_token = EXCLUDED.access_token,
    access_expires_at = EXCLUDED.access_expires_at,
    updated_at = now();
