#include "engine_sim/engine_sim.h"
int brix_engine_sim_main(int argc, char **argv) { (void)argc; (void)argv; return 0; }
