-- When the account's tokens were last refreshed (the refresh token rotates at every
-- refresh) and when the stored access token expires. $1 account
SELECT updated_at, access_expires_at FROM tiny_tokens WHERE account = $1;
