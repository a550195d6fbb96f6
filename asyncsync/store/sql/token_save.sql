-- Store the newest tokens of one account. refresh_issued_at is when the refresh token was
-- last granted (its age is what lapses). $1 account, $2 refresh_token, $3 access_token,
-- $4 access_expires_at, $5 access_issued_at, $6 refresh_expires_at
INSERT INTO tiny_tokens (account, refresh_token, access_token, access_expires_at,
                         access_issued_at, refresh_expires_at, refresh_issued_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, coalesce($5, now()), now())
ON CONFLICT (account) DO UPDATE SET
    refresh_token = EXCLUDED.refresh_token,
    access_token = EXCLUDED.access_token,
    access_expires_at = EXCLUDED.access_expires_at,
    access_issued_at = EXCLUDED.access_issued_at,
    refresh_expires_at = EXCLUDED.refresh_expires_at,
    refresh_issued_at = EXCLUDED.refresh_issued_at,
    updated_at = now();
