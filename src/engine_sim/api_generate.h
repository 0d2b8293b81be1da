/*
 * api_generate — /v1/chat/completions and /v1/completions: sampling and
 * output parameters checked as vLLM checks them, the prompt rendered and
 * tokenized, stop strings, fault injection (x-brix-fault, --failure-rate),
 * and the scheduler's callbacks (brix_engine_on_token / on_finish, declared
 * in engine.h) that stream SSE chunks and write final responses.
 *
 * A request becomes a brix_api_req_t with one sequence per choice (n),
 * owned by the HTTP request (on_abort) until its last sequence finishes:
 * on_finish writes the response (embeddings through api_embed.c) and
 * releases it. A client that leaves takes it out of the scheduler at once.
 */
#ifndef BRIX_ENGINE_SIM_API_GENERATE_H
#define BRIX_ENGINE_SIM_API_GENERATE_H

#include "core/http_server.h"
#include "engine_sim/api_request.h"
#include "engine_sim/engine.h"

/* kind is BRIX_API_CHAT or BRIX_API_COMPLETION. */
void brix_api_generate_handle(brix_engine_t *e, brix_http_req_t *h, brix_api_kind_t kind);

#endif
