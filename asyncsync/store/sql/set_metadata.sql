-- $1 account, $2 chave, $3 valor
INSERT INTO sync_metadata (account, chave, valor, updated_at)
VALUES ($1, $2, $3, now())
ON CONFLICT (account, chave) DO UPDATE SET valor = EXCLUDED.valor, updated_at = now();
