-- Open failures whose next attempt is due at $2: ultima_tentativa + base × factor^(tentativas−1).
-- Records with a synthetic (negative) id cannot be fetched and are never due; neither is a row
-- that used up its attempts. in_mirror tells whether the order already has a row;
-- listed_not_found, whether its failure is a detail's 404 ($8, its error) while that row
-- is not flagged possibly_deleted: no listing has missed the order since.
-- $1 account, $2 now, $3 max attempts, $4 base delay (s), $5 factor, $6 limit,
-- $7 only these ids (NULL: any), $8 the error of a detail's 404
SELECT f.id_ordem,
       coalesce(f.tentativas, 1) AS tentativas,
       EXISTS (
           SELECT 1 FROM ordens_servico o WHERE o.account = $1 AND o.id = f.id_ordem
       ) AS in_mirror,
       f.erro IS NOT DISTINCT FROM $8::text AND EXISTS (
           SELECT 1 FROM ordens_servico o
           WHERE o.account = $1 AND o.id = f.id_ordem AND NOT o.possibly_deleted
       ) AS listed_not_found
FROM import_failures f
WHERE f.account = $1
  AND NOT coalesce(f.resolvido, false)
  AND f.id_ordem > 0
  AND ($7::bigint[] IS NULL OR f.id_ordem = ANY($7::bigint[]))
  AND coalesce(f.tentativas, 1) < $3
  AND f.ultima_tentativa
      + make_interval(secs => $4::float8 * power($5::float8, coalesce(f.tentativas, 1) - 1))
      <= $2::timestamptz
ORDER BY f.ultima_tentativa, f.id_ordem
LIMIT $6;
