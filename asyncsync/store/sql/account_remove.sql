-- Remove an account's row (its mirror, history and tokens stay). $1 key. Returns the key.
DELETE FROM accounts WHERE key = $1 RETURNING key;
