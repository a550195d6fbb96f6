-- Every account the database knows of (small tables only: no scan of the mirror).
SELECT key AS account FROM accounts
UNION SELECT account FROM sync_runs
UNION SELECT account FROM sync_metadata
UNION SELECT account FROM tiny_tokens
UNION SELECT account FROM import_failures
ORDER BY account;
