/*
 * engine_sim — `brix engine-sim`, a simulated vLLM engine.
 */
#ifndef BRIX_ENGINE_SIM_ENGINE_SIM_H
#define BRIX_ENGINE_SIM_ENGINE_SIM_H

int brix_engine_sim_main(int argc, char **argv);

#endif
