-- The newest tokens of one account. $1 account
SELECT refresh_token, access_token, access_expires_at, access_issued_at, refresh_expires_at,
       refresh_issued_at
FROM tiny_tokens WHERE account = $1;
