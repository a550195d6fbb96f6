-- Orders imported successfully, or deleted in Tiny (a detail answered 404 while no listing
-- showed the order: a retry's, a cycle's, an integrity check's; the row, if any, flagged
-- possibly_deleted in the same transaction): their open failures are resolved at the
-- caller's clock, even one at manual review: no person is asked about an order that is gone.
-- $1 account, $2 ids, $3 now
UPDATE import_failures
SET resolvido = true, ultima_tentativa = $3::timestamptz
WHERE account = $1 AND id_ordem = ANY($2::bigint[]) AND NOT coalesce(resolvido, false);
