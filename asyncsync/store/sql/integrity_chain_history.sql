-- Orders an integrity run imported whose history was already there: asyncsync never deletes
-- a mirror row, so one missing was deleted by hand, and the import recorded a first sighting
-- (status_antigo NULL) after the rows it left. Chained to them instead: the status last
-- observed becomes status_antigo, tagged 'integrity'; when it is the status listed now,
-- nothing moved and the row goes. A true first sighting (no earlier row) is left as it is.
-- $1 account, $2 ids the run imported
WITH sighted AS (
    SELECT DISTINCT ON (h.id_os) h.id_os, h.seq, h.status_novo
    FROM ordem_status_history h
    WHERE h.account = $1 AND h.id_os = ANY($2::bigint[]) AND h.status_antigo IS NULL
    ORDER BY h.id_os, h.seq DESC
), chained AS (
    SELECT s.id_os, s.seq, s.status_novo, p.status_novo AS before
    FROM sighted s
    CROSS JOIN LATERAL (
        SELECT q.status_novo FROM ordem_status_history q
        WHERE q.account = $1 AND q.id_os = s.id_os AND q.seq < s.seq
        ORDER BY q.seq DESC
        LIMIT 1
    ) p
), dropped AS (
    DELETE FROM ordem_status_history h
    USING chained c
    WHERE h.account = $1 AND h.id_os = c.id_os AND h.seq = c.seq AND c.before = c.status_novo
)
UPDATE ordem_status_history h
SET status_antigo = c.before, source = 'integrity'
FROM chained c
WHERE h.account = $1 AND h.id_os = c.id_os AND h.seq = c.seq AND c.before <> c.status_novo;
