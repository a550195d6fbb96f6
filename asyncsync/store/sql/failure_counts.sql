-- Open failures of an account: waiting for a retry, and left for a person (attempts used
-- up, or a synthetic id no request can fetch); ignored ones.
-- $1 account, $2 max attempts
SELECT count(*) FILTER (
           WHERE NOT coalesce(resolvido, false) AND id_ordem > 0
             AND coalesce(tentativas, 1) < $2) AS pending,
       count(*) FILTER (
           WHERE NOT coalesce(resolvido, false)
             AND (coalesce(tentativas, 1) >= $2 OR id_ordem < 0)) AS manual_review,
       count(*) FILTER (WHERE ignorado_em IS NOT NULL) AS ignored
FROM import_failures
WHERE account = $1;
