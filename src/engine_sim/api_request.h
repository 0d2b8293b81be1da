/*
 * api_request — what engine-sim's API modules share: the request and
 * sequence types, vLLM-shaped errors and the access log, request bodies
 * parsed with vLLM's checks (JSON content type, one object, no repeated
 * top-level key), model resolution (served names and LoRA adapters), the
 * chat template and token inputs, and the request lifecycle.
 *
 * The API is split by endpoint: api.c (the router, /health, /version,
 * /metrics, /tokenize, /detokenize), api_generate.c (chat and text
 * completions, and the scheduler's callbacks), api_embed.c (/v1/embeddings)
 * and api_models.c (/v1/models, LoRA adapter load and unload).
 *
 * Ownership: a brix_api_req_t owns its sequences and their texts, its stop
 * strings, its model name, its output buffer and one reference to its LoRA
 * adapter; brix_api_req_free frees them all. Once the HTTP request points at
 * it (h->ud, h->on_abort = brix_api_req_on_abort) it is let go only with
 * brix_api_req_release, which defers the free while the scheduler commits a
 * step. Functions that take a brix_http_req_t answer the client themselves
 * when they fail (and return -1 or NULL): callers only clean up.
 */
#ifndef BRIX_ENGINE_SIM_API_REQUEST_H
#define BRIX_ENGINE_SIM_API_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/http_server.h"
#include "core/json.h"
#include "engine_sim/engine.h"

#define BRIX_API_MAX_STOPS 16 /* stop strings per request */

typedef enum brix_api_kind {
    BRIX_API_CHAT,
    BRIX_API_COMPLETION,
    BRIX_API_EMBEDDING
} brix_api_kind_t;

typedef struct brix_api_req brix_api_req_t;

typedef struct brix_api_seq {
    brix_seq_t seq;
    brix_api_req_t *r;
    uint32_t index;
    brix_buf_t text; /* generated text (truncated at a stop string) */
    size_t sent;     /* bytes of text already streamed */
    int stop_idx;    /* index of the matched stop string, -1 = none */
    bool added;      /* handed to the scheduler */
} brix_api_seq_t;

struct brix_api_req {
    brix_engine_t *e;
    brix_http_req_t *http; /* NULL once the client is gone */
    brix_api_kind_t kind;
    bool stream, include_usage, continuous_usage, prompt_details;
    bool dead;                 /* client gone: released, possibly waiting in the graveyard */
    brix_api_req_t *next_dead; /* graveyard link */
    char id[96];
    int64_t created;
    char *model;       /* as the client named it */
    brix_lora_t *lora; /* holds a reference */
    char *stops[BRIX_API_MAX_STOPS];
    size_t nstops;
    size_t n, pending;
    brix_api_seq_t *seqs;
    size_t prompt_tokens; /* per sequence (sum over inputs for embeddings) */
    int64_t max_tokens;   /* effective */
    int64_t abort_after;  /* fault injection: reset the connection after N chunks */
    size_t chunks_sent;
    bool b64; /* embeddings encoding_format base64 */
    int64_t dims;
    brix_buf_t out;
};

/* Answers an OpenAI-style error ({"error":{...}}); type NULL = from the status. */
int brix_api_respond_err(brix_http_req_t *h, int status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Answers 400 with a brix_json_get_* error (its param names the field). */
int brix_api_respond_json_err(brix_http_req_t *h, const brix_json_err_t *je);
void brix_api_access_log(brix_http_req_t *h, int status);
void brix_api_respond_plain(brix_http_req_t *h, int status, const char *body);
/* Answers with b as an application/json body; b stays the caller's. */
void brix_api_respond_buf(brix_http_req_t *h, int status, brix_buf_t *b);
/* Whether the simulated model load (--startup-delay) is over. */
bool brix_api_ready(brix_engine_t *e);
bool brix_api_is_served_name(const brix_engine_t *e, const char *name);
/* Resolves `model` (absent = the base model) to a served name or a LoRA
 * adapter (*lora, not referenced). Answers 400/404 itself and returns -1. */
int brix_api_resolve_model(brix_engine_t *e, brix_http_req_t *h, const cJSON *body,
                           const char **name, brix_lora_t **lora);
/* The body as a JSON object (the caller deletes it), or NULL once answered. */
cJSON *brix_api_parse_body(brix_http_req_t *h);
void brix_api_append_usage(brix_buf_t *b, size_t prompt, size_t completion, bool details,
                           size_t cached);

/* A request of nseqs (zeroed) sequences for `model`; lora may be NULL (the
 * base model), else it is referenced. Answers 500 itself on ENOMEM. The
 * caller fills the sequences and sets n, pending and the HTTP handlers. */
brix_api_req_t *brix_api_req_new(brix_engine_t *e, brix_http_req_t *h, brix_api_kind_t kind,
                                 size_t nseqs, const char *model, brix_lora_t *lora);
/* Frees r and all it owns, taking its sequences out of the scheduler. */
void brix_api_req_free(brix_api_req_t *r);
/* Frees r now, or after the step when the scheduler is committing one. */
void brix_api_req_release(brix_api_req_t *r);
/* on_abort handler for a request whose ud is a brix_api_req_t. */
void brix_api_req_on_abort(brix_http_req_t *h, void *ud);

/* Renders `messages` with the chat template into text; answers 400 on bad
 * messages. */
int brix_api_render_chat(brix_http_req_t *h, const cJSON *body, brix_buf_t *text, bool gen_prompt);
/* Appends BOS to ids; -ENOMEM without answering. */
int brix_api_push_bos(uint32_t **ids, size_t *n, size_t *cap);
/* A completion or embedding input, string | [int], appended to ids as tokens
 * (BOS first for text when bos). `what` names the field in errors. */
int brix_api_input_tokens(brix_http_req_t *h, const cJSON *in, const char *what, bool bos,
                          uint32_t **ids, size_t *n, size_t *cap);

#endif
