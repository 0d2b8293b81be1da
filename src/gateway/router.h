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

#include "core/buf.h"
#include "core/http.h"
#include "gateway/fleet.h"
#include "gateway/prefix_index.h"
#include "gateway/prompt.h"

/* Tunables of the strategies (flags; reloadable). */
typedef struct brix_route_params {
    int64_t block_size;      /* prompt block for prefix hashing: the engines' --block-size */
    int64_t max_blocks;      /* blocks hashed per prompt at most */
    double prefix_std_k;     /* prefix-cache: candidates with load <= mean + k*std */
    double prefix_imbalance; /* prefix-cache: max-min load above this -> least-request */
    /* weighted (default) scorer: costs in prompt-token equivalents */
    double w_prefix; /* per uncached prompt token on the pod */
    double w_queue;  /* per prompt token already queued there by the gateway */
    double w_decode; /* per running sequence, times decode_tokens */
    double decode_tokens;
    double w_kv; /* KV pressure above kv_high, times kv_tokens */
    double kv_high, kv_tokens;
    double w_lora; /* adapter not active on the pod, times lora_tokens */
    double lora_tokens;
    double session_load_factor; /* session-affinity: bounded load (>= 1) */
    /* shared KV store (brix kvcache): a block the store holds and the pod
     * does not costs this fraction of recomputing it (0 = as good as a local
     * hit, 1 = no better than a miss) */
    double kv_store_cost;
    bool kv_store_all; /* --kv-store: every pod's engine uses the store */
} brix_route_params_t;

void brix_route_params_default(brix_route_params_t *p);

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
    const brix_route_params_t *params;
    brix_prefix_index_t *index;   /* shared prefix index (may be NULL) */
    const brix_podset_t *precise; /* pods whose KV events are live */
    brix_arena_t *arena;          /* request memory for lazily computed data */
    brix_buf_t *explain;          /* non-NULL: strategies add their reasoning */
    /* filled by the router */
    uint32_t *cand; /* snapshot pod indices */
    double *score;
    size_t ncand;
    /* computed on first use by a strategy */
    brix_prompt_t prompt;
    bool prompt_done;
    uint32_t *match; /* per candidate: leading prompt blocks the pod holds */
    bool match_done;
    uint32_t *match_approx; /* the same from the gateway's routing history only */
    bool match_approx_done;
    uint32_t store_match; /* leading prompt blocks the shared KV store holds */
    bool store_done;
    const char *session_out; /* session-affinity: x-session-id to return */
    const char *reason;      /* one-line reason of the choice, for explanations */
} brix_route_ctx_t;

/* The request's prompt hashes (empty when unknown). */
const brix_prompt_t *brix_route_prompt(brix_route_ctx_t *ctx);
/* Per candidate, how many leading prompt blocks it holds: cached blocks for
 * pods in ctx->precise, routed ones for the others. */
const uint32_t *brix_route_match(brix_route_ctx_t *ctx);
/* The same from the routed (approximate) sets only, whatever ctx->precise. */
const uint32_t *brix_route_match_approx(brix_route_ctx_t *ctx);
/* Whether the request's model is served by engines sharing a KV store
 * (--kv-store, or the controller's deployment says "kvStore"). */
bool brix_route_has_store(const brix_route_ctx_t *ctx);
/* Leading prompt blocks the shared store is believed to hold: those of
 * prompts routed before to a pod of a store-sharing fleet (the engine saved
 * them after prefill); 0 without a store. An estimate: the store may have
 * evicted them, and the engine asks the store itself before it loads. */
uint32_t brix_route_store_match(brix_route_ctx_t *ctx);
/* Candidate i's prompt blocks that need no prefill, in local-hit units: its
 * own leading blocks m[i] count fully, the store's beyond them count
 * (1 - kv_store_cost) each — cheaper than recompute, dearer than a hit. */
double brix_route_hit_blocks(brix_route_ctx_t *ctx, const uint32_t *m, size_t i);
/* Load of candidate i: the gateway's in-flight requests on it, plus the
 * engine's running + waiting when its metrics are fresh. */
double brix_route_load(const brix_route_ctx_t *ctx, size_t i);
const brix_pod_view_t *brix_route_view(const brix_route_ctx_t *ctx, size_t i);
/* Index of the least-loaded candidate (ties at random). */
size_t brix_route_least_loaded(brix_route_ctx_t *ctx);
/* Records the routed prompt blocks for the chosen pod (approximate index). */
void brix_route_commit(brix_route_ctx_t *ctx, uint32_t pod_index);

typedef struct brix_strategy {
    const char *name;
    /* Scores every candidate, lower is better; used alone (lowest wins, ties
     * at random) and in weighted mixes (normalised to 0..1). */
    void (*score)(brix_route_ctx_t *ctx);
    /* Optional: the strategy's own choice when used alone. */
    size_t (*pick)(brix_route_ctx_t *ctx);
    const char *about;
    /* pick runs even with a single candidate (it sets more than the choice) */
    bool pick_single;
} brix_strategy_t;

#define BRIX_MIX_MAX 8

/* What a routing-strategy value names: one strategy or AIBrix's weighted
 * mix "prefix-cache:2,least-latency:1" (integer weights 0..1000000,
 * default 1; 0 skips). */
typedef struct brix_strategy_sel {
    const brix_strategy_t *s[BRIX_MIX_MAX];
    double w[BRIX_MIX_MAX];
    size_t n;
    char name[96];     /* canonical text, for headers and the access log */
    const char *label; /* metric label: the strategy's name, or "mix" when the
                          selection mixes several (weights never become labels) */
} brix_strategy_sel_t;

/* Parses a strategy name or mix; returns -1 with err for unknown names or
 * bad weights. */
int brix_strategy_parse(const char *text, brix_strategy_sel_t *out, char *err, size_t errlen);
const brix_strategy_t *brix_strategy_find(const char *name);
/* Names of all strategies, comma-separated (for help and errors). */
const char *brix_strategy_names(void);
/* The table of strategies (for docs and tests). */
const brix_strategy_t *const *brix_strategies(size_t *n);

typedef enum brix_route_rc {
    BRIX_ROUTE_OK = 0,
    BRIX_ROUTE_NO_POD, /* nothing routable now */
} brix_route_rc_t;

/* Chooses a pod. cand/score must have room for snap->npods entries. On OK,
 * *pod_index is the snapshot index and *probe says the request is the
 * half-open breaker's probe. */
brix_route_rc_t brix_route(brix_route_ctx_t *ctx, const brix_strategy_sel_t *sel,
                           uint32_t *pod_index, bool *probe);

uint64_t brix_rng_next(uint64_t *state);

/* strategies/ */
extern const brix_strategy_t brix_strategy_random;
extern const brix_strategy_t brix_strategy_round_robin;
extern const brix_strategy_t brix_strategy_least_request;
extern const brix_strategy_t brix_strategy_power_of_two;
extern const brix_strategy_t brix_strategy_throughput;
extern const brix_strategy_t brix_strategy_least_kv_cache;
extern const brix_strategy_t brix_strategy_least_gpu_cache;
extern const brix_strategy_t brix_strategy_least_busy_time;
extern const brix_strategy_t brix_strategy_least_utilization;
extern const brix_strategy_t brix_strategy_least_latency;
extern const brix_strategy_t brix_strategy_prefix_cache;
extern const brix_strategy_t brix_strategy_prefix_cache_precise;
extern const brix_strategy_t brix_strategy_session_affinity;
extern const brix_strategy_t brix_strategy_lora_affinity;
extern const brix_strategy_t brix_strategy_weighted;
extern const brix_strategy_t brix_strategy_sglang_cache_aware;
extern const brix_strategy_t brix_strategy_gie_default;
extern const brix_strategy_t brix_strategy_vtc_basic;

#endif
