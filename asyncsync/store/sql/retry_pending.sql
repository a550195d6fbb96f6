-- Open failures still on schedule but not yet due at $2, and when the next one falls due;
-- and those due already at $2 (a run's budget or stop left them, or Tiny could not serve).
-- $1 account, $2 now, $3 max attempts, $4 base delay (s), $5 factor
SELECT count(*) FILTER (WHERE due_at > $2::timestamptz) AS n,
       min(due_at) FILTER (WHERE due_at > $2::timestamptz) AS next_due_at,
       count(*) FILTER (WHERE due_at <= $2::timestamptz) AS due_now
FROM (
    SELECT (f.ultima_tentativa
            + make_interval(secs => $4::float8 * power($5::float8, coalesce(f.tentativas, 1) - 1))
           )::timestamptz AS due_at
    FROM import_failures f
    WHERE f.account = $1
      AND NOT coalesce(f.resolvido, false)
      AND f.id_ordem > 0
      AND coalesce(f.tentativas, 1) < $3
) s;
