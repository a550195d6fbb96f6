-- Is the database answering (readiness, and a new pool's first statement)?
SELECT 1;
