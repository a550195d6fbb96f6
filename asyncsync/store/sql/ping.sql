-- Is the database answering (readiness)?
SELECT 1;
