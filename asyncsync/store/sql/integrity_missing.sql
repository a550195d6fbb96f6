-- Listed ids absent from the mirror (and not ignored), with the state of their open import
-- failure, if any:
-- due when there is none, or when the retry schedule says the next attempt is due at $2;
-- never when it used up its attempts: it waits for a person (section 6), not for this run.
-- $1 account, $2 now, $3 max attempts, $4 base delay (s), $5 factor
SELECT l.id,
       f.id_ordem IS NOT NULL AS tracked,
       (f.id_ordem IS NULL
        OR (coalesce(f.tentativas, 1) < $3
            AND f.ultima_tentativa
                + make_interval(secs => $4::float8 * power($5::float8, coalesce(f.tentativas, 1) - 1))
                <= $2::timestamptz)) AS due
FROM integrity_listed l
LEFT JOIN import_failures f
       ON f.account = $1 AND f.id_ordem = l.id AND NOT coalesce(f.resolvido, false)
WHERE NOT EXISTS (SELECT 1 FROM ordens_servico o WHERE o.account = $1 AND o.id = l.id)
  -- a person ignored its failure (failures ignore): left alone for good, not missing
  AND NOT EXISTS (SELECT 1 FROM import_failures g
                  WHERE g.account = $1 AND g.id_ordem = l.id AND g.ignorado_em IS NOT NULL)
ORDER BY l.id;
