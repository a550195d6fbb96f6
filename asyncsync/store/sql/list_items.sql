-- The list items the mirror holds (each row's payload) of $2. $1 account
SELECT id, payload::text AS payload
FROM ordens_servico
WHERE account = $1 AND id = ANY($2::bigint[]);
