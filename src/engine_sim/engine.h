/*
 * engine — internal state of `brix engine-sim`, shared by its modules:
 * engine_sim.c (flags, start-up, the step timer, shutdown), the HTTP API
 * (api.c, the router, and the api_*.c modules listed in api_request.h) and
 * engine_metrics.c (vLLM's /metrics).
 *
 * Everything runs on one libuv loop: the HTTP server, the scheduler's step
 * timer and the KV-event sockets, so no state here needs locks.
 */
#ifndef BRIX_ENGINE_SIM_ENGINE_H
#define BRIX_ENGINE_SIM_ENGINE_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "core/config.h"
#include "core/gpu_profile.h"
#include "core/http_server.h"
#include "core/metrics.h"
#include "engine_sim/kv_cache.h"
#include "engine_sim/kv_connector.h"
#include "engine_sim/kv_events.h"
#include "engine_sim/lora.h"
#include "engine_sim/scheduler.h"

#define BRIX_VLLM_VERSION "0.11.0" /* the vLLM release whose API and metrics we mirror */

typedef struct brix_engine_cfg {
    char *config;
    char *host;
    int64_t port;
    char *model;
    brix_strlist_t served_model_name;
    char *api_key; /* vLLM --api-key: /v1 routes need Authorization: Bearer KEY */
    int64_t max_model_len;
    int64_t max_num_seqs;           /* 0 = the profile's default */
    int64_t max_num_batched_tokens; /* 0 = the profile's default */
    int64_t block_size;
    int64_t num_gpu_blocks_override; /* 0 = from the profile */
    bool enable_prefix_caching;
    bool enable_chunked_prefill;
    bool enable_lora;
    int64_t max_loras;
    int64_t max_cpu_loras; /* 0 = max_loras */
    int64_t max_lora_rank;
    brix_strlist_t lora_modules;
    bool lora_path_check;
    char *kv_events_config;
    char *kv_transfer_config; /* vLLM --kv-transfer-config: the KV store connector */
    char *gpu;
    char *gpu_profiles;
    double time_scale;
    int64_t seed;
    char *output_len_dist;
    char *startup_delay_arg;  /* --startup-delay: SECONDS | auto */
    double model_weights_gib; /* 0 = from the model name, else the profiles' 8B (15 GiB) */
    double startup_delay;     /* simulated seconds, resolved from the two above */
    double failure_rate;
    int64_t embedding_dim;
    char *show_hidden_metrics_for_version;
    char *log_level;
    brix_http_limits_t http;
    uint64_t shutdown_timeout;
} brix_engine_cfg_t;

typedef enum brix_outlen_kind {
    BRIX_OUTLEN_NONE,      /* always max_tokens */
    BRIX_OUTLEN_FIXED,     /* EOS after a = N tokens */
    BRIX_OUTLEN_GEOMETRIC, /* mean a */
    BRIX_OUTLEN_UNIFORM,   /* [a, b] */
    BRIX_OUTLEN_LOGNORMAL, /* median a, sigma b */
} brix_outlen_kind_t;

typedef struct brix_outlen {
    brix_outlen_kind_t kind;
    double a, b;
} brix_outlen_t;

/* Child pointers of the engine's metric families (see engine_metrics.c). */
typedef struct brix_engine_metrics {
    brix_metrics_t *reg;
    brix_metric_t *running, *waiting, *kv_usage, *gpu_cache_usage;
    brix_metric_t *prefix_queries, *prefix_hits, *gpu_prefix_queries, *gpu_prefix_hits;
    brix_metric_t *preemptions, *prompt_tokens, *generation_tokens;
    brix_metric_t *success_stop, *success_length, *success_abort;
    brix_metric_t *h_prompt_tokens, *h_generation_tokens, *h_iteration_tokens;
    brix_metric_t *h_max_gen_tokens, *h_params_n, *h_params_max_tokens;
    brix_metric_t *h_ttft, *h_tpot, *h_itl, *h_req_tpot;
    brix_metric_t *h_e2e, *h_queue, *h_inference, *h_prefill, *h_decode;
    brix_metric_family_t *lora_info;
    /* KV connector (NULL without one) */
    brix_metric_t *ext_queries, *ext_hits, *kvc_loads, *kvc_blocks_loaded, *kvc_bytes_loaded;
    brix_metric_t *kvc_blocks_saved, *kvc_bytes_saved, *kvc_save_failures, *kvc_save_dropped;
    brix_metric_t *kvc_checksum_errors, *kvc_wait, *kvc_members, *kvc_members_up, *kvc_members_shm;
    brix_metric_t *kvc_load_failures[BRIX_KVC_FAIL_N];
    uint64_t seen_preemptions, seen_queries, seen_hits, seen_prompt, seen_gen;
} brix_engine_metrics_t;

typedef struct brix_engine {
    brix_engine_cfg_t cfg;
    uv_loop_t *loop;
    const char *served; /* primary served model name */
    brix_gpu_profiles_t profiles;
    const brix_gpu_profile_t *profile;
    brix_outlen_t outlen;
    brix_kv_pool_t pool;
    brix_lora_reg_t loras;
    brix_sched_t sched;
    brix_kv_events_t *events;
    brix_kvc_t *kvc; /* --kv-transfer-config, NULL = none */
    brix_engine_metrics_t m;
    brix_http_server_t *http;
    int port;
    uint64_t epoch_ns; /* monotonic start: simulated time 0 */
    double ready_at;   /* simulated seconds when /health turns 200 */
    uv_timer_t step_timer;
    bool step_active;
    double step_end; /* simulated end of the planned step */
    uint64_t rng;    /* for --failure-rate */
    int64_t created; /* unix seconds at start, for /v1/models */
    uv_signal_t sigterm, sigint;
    uv_timer_t shutdown_timer;
    bool draining;
    bool force_close; /* second signal: stop waiting for in-flight requests */
    uint64_t drain_start_ns;
    bool in_commit;  /* inside brix_sched_commit: releases are deferred */
    void *graveyard; /* requests released during a commit (api_request.c) */
    uint64_t requests_inflight;
} brix_engine_t;

/* Simulated seconds since start (wall time divided by --time-scale). */
double brix_engine_now(const brix_engine_t *e);
/* Starts a step if the scheduler has work and none is running. */
void brix_engine_kick(brix_engine_t *e);

/* api.c: the HTTP server's handler */
void brix_engine_handle(brix_http_req_t *req, void *ud);
/* api_generate.c: the scheduler's callbacks */
bool brix_engine_on_token(brix_seq_t *q, uint32_t token, void *ud);
void brix_engine_on_finish(brix_seq_t *q, void *ud);
/* api_request.c: frees requests released during the last commit. */
void brix_engine_reap(brix_engine_t *e);
/* scheduler on_step hook: observes vllm:iteration_tokens_total */
void brix_engine_on_step(uint64_t tokens, void *ud);

/* engine_metrics.c */
int brix_engine_metrics_init(brix_engine_t *e);
void brix_engine_metrics_free(brix_engine_t *e);

/* Parses --output-len-dist; returns 0 or -1 with err. */
int brix_outlen_parse(const char *s, brix_outlen_t *out, char *err, size_t errlen);
/* Draws an output length (SIZE_MAX = no EOS) from the distribution. */
size_t brix_outlen_draw(const brix_outlen_t *d, uint64_t *rng);

#endif
