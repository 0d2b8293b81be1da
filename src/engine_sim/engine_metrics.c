/*
 * vLLM's Prometheus metrics for engine-sim: the names, HELP strings, labels
 * and histogram buckets of vLLM v0.11 (vllm/v1/metrics/loggers.py), with
 * labels in the alphabetical order prometheus_client prints them.
 *
 * Counters the scheduler keeps (tokens, prefix hits, preemptions) are copied
 * into the registry at scrape time by a collect hook, as are the gauges.
 * Per-request histograms are observed by api_generate.c when a request
 * finishes, TTFT and ITL as tokens are produced. All times are simulated
 * seconds.
 *
 * Not reproduced: prometheus_client's `_created` series and the Python
 * process/GC metrics, which carry no engine state.
 */
#include "core/alloc.h"
#include "core/time.h"
#include "engine_sim/engine.h"

#include <stdio.h>
#include <string.h>

static const double ttft_buckets[] = { 0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                       0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                       20.0,  40.0,  80.0, 160.0, 640.0, 2560.0 };
static const double itl_buckets[] = { 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                                      0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0 };
static const double latency_buckets[] = { 0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                          5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                          60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0 };
static const double iter_buckets[] = { 1,   8,    16,   32,   64,   128,  256,
                                       512, 1024, 2048, 4096, 8192, 16384 };
static const double n_buckets[] = { 1, 2, 5, 10, 20 };

#define NB(a) (sizeof(a) / sizeof *(a))

static const char *const L_ME[] = { "engine", "model_name", NULL };
static const char *const L_MER[] = { "engine", "finished_reason", "model_name", NULL };

static void on_collect(brix_metrics_t *reg, void *ud)
{
    brix_engine_t *e = ud;
    brix_engine_metrics_t *m = &e->m;
    const brix_sched_stats_t *st = &e->sched.st;
    brix_metric_set(m->running, (double)e->sched.nrunning);
    brix_metric_set(m->waiting, (double)e->sched.nwaiting);
    double usage = brix_kv_pool_usage(&e->pool);
    brix_metric_set(m->kv_usage, usage);
    if (m->gpu_cache_usage)
        brix_metric_set(m->gpu_cache_usage, usage);
#define SYNC(metric, field, seen)                                                                  \
    do {                                                                                           \
        brix_metric_add(metric, (double)(st->field - m->seen));                                    \
        m->seen = st->field;                                                                       \
    } while (0)
    uint64_t q0 = m->seen_queries, h0 = m->seen_hits;
    SYNC(m->prefix_queries, prefix_queries, seen_queries);
    SYNC(m->prefix_hits, prefix_hits, seen_hits);
    if (m->gpu_prefix_queries) {
        brix_metric_add(m->gpu_prefix_queries, (double)(st->prefix_queries - q0));
        brix_metric_add(m->gpu_prefix_hits, (double)(st->prefix_hits - h0));
    }
    SYNC(m->preemptions, preemptions, seen_preemptions);
    SYNC(m->prompt_tokens, prompt_tokens, seen_prompt);
    SYNC(m->generation_tokens, generation_tokens, seen_gen);
#undef SYNC
    if (e->kvc) {
        const brix_kvc_stats_t *k = brix_kvc_stats(e->kvc);
        brix_metric_set(m->ext_queries, (double)k->queries_tokens);
        brix_metric_set(m->ext_hits, (double)k->hits_tokens);
        brix_metric_set(m->kvc_loads, (double)k->loads);
        brix_metric_set(m->kvc_blocks_loaded, (double)k->blocks_loaded);
        brix_metric_set(m->kvc_bytes_loaded, (double)k->bytes_loaded);
        brix_metric_set(m->kvc_blocks_saved, (double)k->blocks_saved);
        brix_metric_set(m->kvc_bytes_saved, (double)k->bytes_saved);
        brix_metric_set(m->kvc_save_failures, (double)k->save_failures);
        brix_metric_set(m->kvc_save_dropped, (double)k->save_dropped);
        brix_metric_set(m->kvc_checksum_errors, (double)k->checksum_errors);
        brix_metric_set(m->kvc_wait, k->wait_seconds);
        brix_metric_set(m->kvc_members, k->members);
        brix_metric_set(m->kvc_members_up, k->members_up);
        brix_metric_set(m->kvc_members_shm, k->members_shm);
        for (int i = 0; i < BRIX_KVC_FAIL_N; i++)
            brix_metric_set(m->kvc_load_failures[i], (double)k->load_failures[i]);
    }
    if (m->lora_info) {
        /* One current series (vLLM keeps every past label combination; a
         * consumer reading the newest timestamp sees the same answer). */
        char running[1024], waiting[1024], maxl[16];
        brix_lora_names(&e->loras, true, running, sizeof running);
        brix_lora_names(&e->loras, false, waiting, sizeof waiting);
        snprintf(maxl, sizeof maxl, "%lld", (long long)e->cfg.max_loras);
        brix_metric_family_clear(m->lora_info);
        const char *vals[] = { maxl, running, waiting };
        brix_metric_t *c = brix_metric_child(m->lora_info, vals);
        if (c)
            brix_metric_set(c, (double)brix_wall_ms() / 1000.0);
    }
}

void brix_engine_on_step(uint64_t tokens, void *ud)
{
    brix_engine_t *e = ud;
    if (tokens)
        brix_metric_observe(e->m.h_iteration_tokens, (double)tokens);
}

static brix_metric_t *fam(brix_engine_t *e, brix_metric_type_t t, const char *name,
                          const char *help, const double *b, size_t nb)
{
    brix_metric_family_t *f = brix_metrics_family(e->m.reg, t, name, help, L_ME, b, nb);
    const char *vals[] = { "0", e->served };
    return f ? brix_metric_child(f, vals) : NULL;
}

/* vLLM's build_1_2_5_buckets(max_model_len): 1,2,5,10,... up to max_model_len. */
static size_t buckets_125(double *out, size_t cap, double max)
{
    size_t n = 0;
    static const double mant[] = { 1, 2, 5 };
    for (double exp10 = 1; n < cap; exp10 *= 10) {
        for (size_t i = 0; i < 3 && n < cap; i++) {
            double v = mant[i] * exp10;
            if (v > max)
                return n;
            out[n++] = v;
        }
    }
    return n;
}

/* The KV connector's counters: vLLM's two external_prefix_cache counters
 * (vllm/v1/metrics/loggers.py, in tokens) and brix's own, under brix_engine_kv_. */
static int kvc_metrics_init(brix_engine_t *e)
{
    brix_engine_metrics_t *m = &e->m;
    const brix_metric_type_t C = BRIX_METRIC_COUNTER;
    m->ext_queries = fam(e, C, "vllm:external_prefix_cache_queries_total",
                         "External prefix cache queries from KV connector cross-instance cache "
                         "sharing, in terms of number of queried tokens.",
                         NULL, 0);
    m->ext_hits = fam(e, C, "vllm:external_prefix_cache_hits_total",
                      "External prefix cache hits from KV connector cross-instance cache "
                      "sharing, in terms of number of cached tokens.",
                      NULL, 0);
    m->kvc_loads = fam(e, C, "brix_engine_kv_loads_total",
                       "Lookups in the KV store that ended (hit, miss or failure).", NULL, 0);
    m->kvc_blocks_loaded = fam(e, C, "brix_engine_kv_loaded_blocks_total",
                               "KV blocks loaded from the store and verified.", NULL, 0);
    m->kvc_bytes_loaded = fam(e, C, "brix_engine_kv_loaded_bytes_total",
                              "Bytes of KV blocks loaded from the store and verified.", NULL, 0);
    m->kvc_blocks_saved =
        fam(e, C, "brix_engine_kv_saved_blocks_total",
            "KV blocks the store holds after a save (stored or already there).", NULL, 0);
    m->kvc_bytes_saved = fam(e, C, "brix_engine_kv_saved_bytes_total",
                             "Bytes of KV blocks saved to the store.", NULL, 0);
    m->kvc_save_failures =
        fam(e, C, "brix_engine_kv_save_failures_total",
            "KV blocks a save did not store (store down, full, refused).", NULL, 0);
    m->kvc_save_dropped =
        fam(e, C, "brix_engine_kv_save_dropped_total",
            "KV blocks not saved because the connector's save queue was full.", NULL, 0);
    m->kvc_checksum_errors =
        fam(e, C, "brix_engine_kv_checksum_errors_total",
            "KV blocks loaded with wrong bytes (treated as a miss and recomputed).", NULL, 0);
    m->kvc_wait =
        fam(e, C, "brix_engine_kv_remote_wait_seconds_total",
            "Simulated seconds requests waited for remote KV (lookup, load, transfer).", NULL, 0);
    const brix_metric_type_t G = BRIX_METRIC_GAUGE;
    m->kvc_members = fam(e, G, "brix_engine_kv_store_members",
                         "KV store nodes the connector places keys on.", NULL, 0);
    m->kvc_members_up = fam(e, G, "brix_engine_kv_store_members_up",
                            "KV store nodes connected with the namespace accepted, as of the "
                            "last store call.",
                            NULL, 0);
    m->kvc_members_shm =
        fam(e, G, "brix_engine_kv_store_members_shm",
            "KV store nodes read through their mapped memory (same host), as of the last store "
            "call.",
            NULL, 0);
    static const char *const L_REASON[] = { "engine", "model_name", "reason", NULL };
    brix_metric_family_t *f = brix_metrics_family(
        m->reg, C, "brix_engine_kv_load_failures_total",
        "Loads cut short (the failed block and every later one recomputed), by reason.", L_REASON,
        NULL, 0);
    if (!f)
        return -1;
    for (int i = 0; i < BRIX_KVC_FAIL_N; i++) {
        const char *vals[] = { "0", e->served, brix_kvc_fail_name((brix_kvc_fail_t)i) };
        if (!(m->kvc_load_failures[i] = brix_metric_child(f, vals)))
            return -1;
    }
    return m->ext_queries && m->ext_hits && m->kvc_wait && m->kvc_members_shm ? 0 : -1;
}

int brix_engine_metrics_init(brix_engine_t *e)
{
    brix_engine_metrics_t *m = &e->m;
    memset(m, 0, sizeof *m);
    if (!(m->reg = brix_metrics_new()))
        return -1;
    bool hidden = e->cfg.show_hidden_metrics_for_version &&
                  !strcmp(e->cfg.show_hidden_metrics_for_version, "0.10");
    double b125[32];
    size_t n125 = buckets_125(b125, 32, (double)e->cfg.max_model_len);
    const brix_metric_type_t G = BRIX_METRIC_GAUGE, C = BRIX_METRIC_COUNTER,
                             H = BRIX_METRIC_HISTOGRAM;

    m->running = fam(e, G, "vllm:num_requests_running",
                     "Number of requests in model execution batches.", NULL, 0);
    m->waiting = fam(e, G, "vllm:num_requests_waiting",
                     "Number of requests waiting to be processed.", NULL, 0);
    m->kv_usage = fam(e, G, "vllm:kv_cache_usage_perc",
                      "KV-cache usage. 1 means 100 percent usage.", NULL, 0);
    if (hidden)
        m->gpu_cache_usage = fam(e, G, "vllm:gpu_cache_usage_perc",
                                 "GPU KV-cache usage. 1 means 100 percent usage.DEPRECATED: Use "
                                 "vllm:kv_cache_usage_perc instead.",
                                 NULL, 0);
    m->prefix_queries = fam(e, C, "vllm:prefix_cache_queries_total",
                            "Prefix cache queries, in terms of number of queried tokens.", NULL, 0);
    m->prefix_hits = fam(e, C, "vllm:prefix_cache_hits_total",
                         "Prefix cache hits, in terms of number of cached tokens.", NULL, 0);
    if (hidden) {
        m->gpu_prefix_queries =
            fam(e, C, "vllm:gpu_prefix_cache_queries_total",
                "GPU prefix cache queries, in terms of number of queried tokens.DEPRECATED: Use "
                "vllm:prefix_cache_queries instead.",
                NULL, 0);
        m->gpu_prefix_hits =
            fam(e, C, "vllm:gpu_prefix_cache_hits_total",
                "GPU prefix cache hits, in terms of number of cached tokens.DEPRECATED: Use "
                "vllm:prefix_cache_hits instead.",
                NULL, 0);
    }
    m->preemptions = fam(e, C, "vllm:num_preemptions_total",
                         "Cumulative number of preemption from the engine.", NULL, 0);
    m->prompt_tokens =
        fam(e, C, "vllm:prompt_tokens_total", "Number of prefill tokens processed.", NULL, 0);
    m->generation_tokens = fam(e, C, "vllm:generation_tokens_total",
                               "Number of generation tokens processed.", NULL, 0);
    brix_metric_family_t *succ =
        brix_metrics_family(m->reg, C, "vllm:request_success_total",
                            "Count of successfully processed requests.", L_MER, NULL, 0);
    if (succ) {
        const char *s1[] = { "0", "stop", e->served }, *s2[] = { "0", "length", e->served },
                   *s3[] = { "0", "abort", e->served };
        m->success_stop = brix_metric_child(succ, s1);
        m->success_length = brix_metric_child(succ, s2);
        m->success_abort = brix_metric_child(succ, s3);
    }
    m->h_prompt_tokens =
        fam(e, H, "vllm:request_prompt_tokens", "Number of prefill tokens processed.", b125, n125);
    m->h_generation_tokens = fam(e, H, "vllm:request_generation_tokens",
                                 "Number of generation tokens processed.", b125, n125);
    m->h_iteration_tokens =
        fam(e, H, "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
            iter_buckets, NB(iter_buckets));
    m->h_max_gen_tokens =
        fam(e, H, "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.", b125, n125);
    m->h_params_n = fam(e, H, "vllm:request_params_n", "Histogram of the n request parameter.",
                        n_buckets, NB(n_buckets));
    m->h_params_max_tokens = fam(e, H, "vllm:request_params_max_tokens",
                                 "Histogram of the max_tokens request parameter.", b125, n125);
    m->h_ttft = fam(e, H, "vllm:time_to_first_token_seconds",
                    "Histogram of time to first token in seconds.", ttft_buckets, NB(ttft_buckets));
    m->h_tpot = fam(e, H, "vllm:time_per_output_token_seconds",
                    "Histogram of time per output token in seconds.DEPRECATED: Use "
                    "vllm:inter_token_latency_seconds instead.",
                    itl_buckets, NB(itl_buckets));
    m->h_itl = fam(e, H, "vllm:inter_token_latency_seconds",
                   "Histogram of inter-token latency in seconds.", itl_buckets, NB(itl_buckets));
    m->h_req_tpot = fam(e, H, "vllm:request_time_per_output_token_seconds",
                        "Histogram of time_per_output_token_seconds per request.", itl_buckets,
                        NB(itl_buckets));
    m->h_e2e =
        fam(e, H, "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.", latency_buckets, NB(latency_buckets));
    m->h_queue = fam(e, H, "vllm:request_queue_time_seconds",
                     "Histogram of time spent in WAITING phase for request.", latency_buckets,
                     NB(latency_buckets));
    m->h_inference = fam(e, H, "vllm:request_inference_time_seconds",
                         "Histogram of time spent in RUNNING phase for request.", latency_buckets,
                         NB(latency_buckets));
    m->h_prefill = fam(e, H, "vllm:request_prefill_time_seconds",
                       "Histogram of time spent in PREFILL phase for request.", latency_buckets,
                       NB(latency_buckets));
    m->h_decode = fam(e, H, "vllm:request_decode_time_seconds",
                      "Histogram of time spent in DECODE phase for request.", latency_buckets,
                      NB(latency_buckets));

    /* vllm:cache_config_info: CacheConfig's fields as labels, value 1. */
    static const char *const cc_labels[] = { "block_size",
                                             "cache_dtype",
                                             "calculate_kv_scales",
                                             "cpu_kvcache_space_bytes",
                                             "cpu_offload_gb",
                                             "enable_prefix_caching",
                                             "engine",
                                             "gpu_memory_utilization",
                                             "is_attention_free",
                                             "kv_cache_memory_bytes",
                                             "kv_sharing_fast_prefill",
                                             "mamba_cache_dtype",
                                             "mamba_page_size_padded",
                                             "mamba_ssm_cache_dtype",
                                             "num_cpu_blocks",
                                             "num_gpu_blocks",
                                             "num_gpu_blocks_override",
                                             "prefix_caching_hash_algo",
                                             "sliding_window",
                                             "swap_space",
                                             "swap_space_bytes",
                                             NULL };
    brix_metric_family_t *cc =
        brix_metrics_family(m->reg, G, "vllm:cache_config_info",
                            "Information of the LLMEngine CacheConfig", cc_labels, NULL, 0);
    if (cc) {
        char bs[16], nb[16], ovr[16];
        snprintf(bs, sizeof bs, "%lld", (long long)e->cfg.block_size);
        snprintf(nb, sizeof nb, "%u", e->pool.nblocks);
        if (e->cfg.num_gpu_blocks_override)
            snprintf(ovr, sizeof ovr, "%lld", (long long)e->cfg.num_gpu_blocks_override);
        else
            snprintf(ovr, sizeof ovr, "None");
        const char *vals[] = { bs,     "auto",  "False",
                               "None", "0.0",   e->cfg.enable_prefix_caching ? "True" : "False",
                               "0",    "0.9",   "False",
                               "None", "False", "auto",
                               "None", "auto",  "None",
                               nb,     ovr,     "sha256",
                               "None", "4.0",   "4294967296.0" };
        brix_metric_t *c = brix_metric_child(cc, vals);
        if (c)
            brix_metric_set(c, 1);
    }
    if (e->cfg.enable_lora) {
        static const char *const ll[] = { "max_lora", "running_lora_adapters",
                                          "waiting_lora_adapters", NULL };
        m->lora_info = brix_metrics_family(m->reg, G, "vllm:lora_requests_info",
                                           "Running stats on lora requests.", ll, NULL, 0);
    }
    if (e->kvc && kvc_metrics_init(e))
        return -1;
    brix_metrics_on_collect(m->reg, on_collect, e);
    if (!m->running || !m->h_decode || !m->success_abort)
        return -1;
    return 0;
}

void brix_engine_metrics_free(brix_engine_t *e)
{
    if (e->m.reg)
        brix_metrics_free(e->m.reg);
    e->m.reg = NULL;
}
