-- Enable or disable an account. $1 key, $2 enabled. Returns the key when it exists.
UPDATE accounts SET enabled = $2, updated_at = now() WHERE key = $1 RETURNING key;
