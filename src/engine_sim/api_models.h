/*
 * api_models — what the engine serves: /v1/models (the served names, then
 * every registered LoRA adapter, in vLLM's shape) and vLLM's runtime
 * adapter endpoints, /v1/load_lora_adapter and /v1/unload_lora_adapter
 * (404 unless --enable-lora).
 *
 * A load answers after the GPU profile's lora_load_seconds (scaled by
 * --time-scale) from a timer owned by the pending load, with copies of the
 * name and path; a client that leaves first closes the timer and nothing is
 * loaded. An unload takes the adapter out of the registry at once; requests
 * using it keep their reference (lora.h).
 */
#ifndef BRIX_ENGINE_SIM_API_MODELS_H
#define BRIX_ENGINE_SIM_API_MODELS_H

#include "core/http_server.h"
#include "engine_sim/engine.h"

void brix_api_models_list(brix_engine_t *e, brix_http_req_t *h);
void brix_api_models_load_lora(brix_engine_t *e, brix_http_req_t *h);
void brix_api_models_unload_lora(brix_engine_t *e, brix_http_req_t *h);

#endif
