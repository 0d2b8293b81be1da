/*
 * api_embed — /v1/embeddings. Each input (a string, strings, token ids or
 * lists of them) runs through the scheduler as a prefill-only sequence, so
 * it costs what a pooling model costs in vLLM; the answer is one
 * deterministic unit vector per input, derived from its tokens and --seed,
 * as floats or base64.
 *
 * The request (api_request.h) is owned by the HTTP request until the
 * scheduler finishes its last sequence: then on_finish (api_generate.c)
 * calls brix_api_embed_write and releases it.
 */
#ifndef BRIX_ENGINE_SIM_API_EMBED_H
#define BRIX_ENGINE_SIM_API_EMBED_H

#include "core/http_server.h"
#include "engine_sim/api_request.h"
#include "engine_sim/engine.h"

void brix_api_embed_handle(brix_engine_t *e, brix_http_req_t *h);
/* Answers 200 for r, whose sequences have all finished. */
void brix_api_embed_write(brix_api_req_t *r);

#endif
