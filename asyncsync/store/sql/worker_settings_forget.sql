-- A worker that stops takes its settings out of the comparison. $1 worker
DELETE FROM worker_settings WHERE worker = $1;
