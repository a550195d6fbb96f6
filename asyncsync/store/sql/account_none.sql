-- Whether the accounts table is empty (a single-account install). (no parameters)
SELECT NOT EXISTS (SELECT 1 FROM accounts);
