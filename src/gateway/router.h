/*
 * router — chooses the pod for a request: filter, then score, then pick.
 *
 *  filter: pods that serve the requested model (base or adapter), pass health
 *          checks, are not ejected by the circuit breaker and were not tried
 *          already by this request (retries);
 *  score:  the strategy gives each candidate a number, lower is better;
 *  pick:   the lowest score, ties broken at random (or the strategy's own
 *          pick, e.g. round-robin).
 * Strategies are a table of {name, score, pick}; adding one touches only
 * strategies/. Decision cost is O(candidates).
 */
#ifndef BRIX_GATEWAY_ROUTER_H
#define BRIX_GATEWAY_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/http.h"
#include "core/json_scan.h"
#include "gateway/fleet.h"

/* The fields of a request body the gateway looks at, pointing into the body
 * (which stays unchanged and is forwarded as received). */
typedef struct brix_req_fields {
    const char *model;         /* unescaped, NUL-terminated */
    bool stream;
    brix_json_val_t messages;  /* chat; kind NULL when absent */
    brix_json_val_t prompt;    /* completions */
    brix_json_val_t input;     /* embeddings */
} brix_req_fields_t;

typedef struct brix_route_ctx {
    const brix_fleet_snap_t *snap;
    const brix_model_entry_t *model;
    const brix_http_req_t *req; /* headers (session keys, ...) */
    const brix_req_fields_t *fields;
    uint64_t now_ns;
    uint64_t *rng;           /* worker's generator */
    uint64_t *rr;            /* worker's round-robin cursor */
    const uint32_t *exclude; /* snapshot pod indices already tried */
    size_t nexclude;
    /* filled by the router */
    uint32_t *cand; /* snapshot pod indices */
    double *score;
    size_t ncand;
} brix_route_ctx_t;

typedef struct brix_strategy {
    const char *name;
    void (*score)(brix_route_ctx_t *ctx);  /* NULL: every score 0 */
    size_t (*pick)(brix_route_ctx_t *ctx); /* NULL: lowest score, random tie-break */
} brix_strategy_t;

const brix_strategy_t *brix_strategy_find(const char *name);
/* Names of all strategies, comma-separated (for help and errors). */
const char *brix_strategy_names(void);

typedef enum brix_route_rc {
    BRIX_ROUTE_OK = 0,
    BRIX_ROUTE_NO_POD, /* nothing routable now */
} brix_route_rc_t;

/* Chooses a pod. cand/score must have room for snap->npods entries. On OK,
 * *pod_index is the snapshot index and *probe says the request is the
 * half-open breaker's probe. */
brix_route_rc_t brix_route(brix_route_ctx_t *ctx, const brix_strategy_t *s, uint32_t *pod_index,
                           bool *probe);

uint64_t brix_rng_next(uint64_t *state);

/* strategies/basic.c */
extern const brix_strategy_t brix_strategy_random;
extern const brix_strategy_t brix_strategy_round_robin;
extern const brix_strategy_t brix_strategy_least_request;

#endif
