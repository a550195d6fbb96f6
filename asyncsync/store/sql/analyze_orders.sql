-- Fresh planner statistics while a load grows the mirror.
ANALYZE ordens_servico;
