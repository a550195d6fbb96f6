-- The orders of an account with an open failure (a person's ignored ones are resolved):
-- the listing merge resolves those it reads whole (resolve_listed_failures). $1 account
SELECT id_ordem FROM import_failures WHERE account = $1 AND NOT coalesce(resolvido, false);
