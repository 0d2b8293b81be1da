/*
 * engine_stats — what the gateway learns from an engine's /metrics.
 *
 * One scrape is parsed with the core Prometheus parser into raw values
 * (vLLM v0.11 names, with the pre-0.10 ones as fallbacks), then turned into
 * the numbers strategies use: instantaneous gauges (running, waiting, KV
 * usage), rates from counter deltas (prompt and generation tokens/s),
 * per-request means from histogram deltas (queue time, prefill time per
 * prompt token, time per output token), the prefix-cache hit rate, and the
 * LoRA adapters running or waiting (vllm:lora_requests_info labels).
 * Derived values are exponentially smoothed across scrapes (weight
 * BRIX_STATS_EWMA for the newest) so one quiet interval does not erase them.
 */
#ifndef BRIX_GATEWAY_ENGINE_STATS_H
#define BRIX_GATEWAY_ENGINE_STATS_H

#include <stdbool.h>
#include <stddef.h>

#define BRIX_STATS_EWMA 0.3

typedef struct brix_engine_stats {
    double running, waiting, kv_usage;
    double prompt_tps, gen_tps; /* tokens per second */
    double busy;                /* share of recent scrapes with work on the engine */
    double queue_s;             /* mean time a request waited before its first step */
    double prefill_s_per_tok;   /* prefill time per prompt token */
    double tpot_s;              /* time per output token (inter-token latency) */
    double prefix_hit_rate;     /* prefix-cache hits / queried tokens */
    double mean_prompt_tokens;  /* per finished request */
    int max_lora;               /* from lora_requests_info, -1 unknown */
    char running_loras[256];    /* comma-joined adapter names (truncated) */
    char waiting_loras[256];
} brix_engine_stats_t;

/* Raw counters of the previous scrape, for deltas. */
typedef struct brix_scrape_state {
    bool have_prev;
    bool have_rates;         /* the rate averages have a first sample */
    bool have_hit_rate;      /* the prefix hit rate has a first sample */
    bool restarted;          /* set by an update whose counters went backwards */
    unsigned invalid_values; /* vllm:* values of the last update that were NaN,
                                +-Inf or negative, refused as missing */
    double t;
    double prompt_tokens, gen_tokens;
    double queue_sum, queue_count;
    double prefill_sum, prefill_count;
    double prompt_hist_sum, prompt_hist_count;
    double itl_sum, itl_count;
    double prefix_hits, prefix_queries;
} brix_scrape_state_t;

/* Parses one /metrics body scraped at monotonic time now_s and updates
 * *stats (smoothing derived values with their previous values). Values that
 * are NaN, infinite or negative are refused as missing (counted in
 * st->invalid_values): a refused state gauge (running, waiting, KV usage,
 * LoRA info) fails the whole update, a refused counter or histogram only skips this
 * update's rates and means. Returns false when the body has no usable vLLM
 * load figures (then nothing changes). */
bool brix_engine_stats_update(const char *body, size_t len, double now_s, brix_scrape_state_t *st,
                              brix_engine_stats_t *stats);

/* Whether `name` is in a comma-joined list. */
bool brix_engine_stats_has_lora(const char *list, const char *name);
/* Number of names in a comma-joined list. */
int brix_engine_stats_count(const char *list);

#endif
