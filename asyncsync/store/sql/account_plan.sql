-- What the planner needs of every enabled account: when its last integrity check started.
-- $1 keys to plan (NULL: every enabled row of accounts)
SELECT k.key,
       (SELECT max(r.started_at) FROM sync_runs r
        WHERE r.account = k.key AND r.mode = 'integrity'
          AND r.outcome IN ('ok', 'attention')) AS last_integrity
FROM (
    SELECT key FROM accounts WHERE enabled AND $1::text[] IS NULL
    UNION
    SELECT unnest($1::text[])
) k
ORDER BY k.key;
