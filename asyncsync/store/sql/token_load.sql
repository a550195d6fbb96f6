-- $1 account
SELECT refresh_token, access_token, access_expires_at FROM tiny_tokens WHERE account = $1;
