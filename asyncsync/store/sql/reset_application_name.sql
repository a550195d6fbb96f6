-- Back to the pool's own session name.
RESET application_name;
