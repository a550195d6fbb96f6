-- Every account the database knows of. The history tables grow for ever (a run a serve
-- cycle, every failure ever resolved): their accounts are read by skipping through the
-- index that starts with the account, one lookup an account, not a scan of every row.
WITH RECURSIVE runs AS (
    (SELECT account FROM sync_runs ORDER BY account LIMIT 1)
    UNION ALL
    SELECT (SELECT s.account FROM sync_runs s
            WHERE s.account > r.account ORDER BY s.account LIMIT 1)
    FROM runs r
    WHERE r.account IS NOT NULL
), failures AS (
    (SELECT account FROM import_failures ORDER BY account LIMIT 1)
    UNION ALL
    SELECT (SELECT f.account FROM import_failures f
            WHERE f.account > r.account ORDER BY f.account LIMIT 1)
    FROM failures r
    WHERE r.account IS NOT NULL
)
SELECT key AS account FROM accounts
UNION SELECT account FROM runs WHERE account IS NOT NULL
UNION SELECT account FROM sync_metadata
UNION SELECT account FROM tiny_tokens
UNION SELECT account FROM failures WHERE account IS NOT NULL
ORDER BY account;
