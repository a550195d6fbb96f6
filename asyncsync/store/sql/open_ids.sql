-- Orders the mirror holds in the given statuses (not flagged as possibly deleted).
-- $1 account, $2 statuses
SELECT id FROM ordens_servico
WHERE account = $1 AND situacao = ANY($2::smallint[]) AND NOT possibly_deleted;
