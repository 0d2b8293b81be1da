/* Scrape parsing and derived engine statistics; see engine_stats.h. */
#include "gateway/engine_stats.h"

#include "core/metrics.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct raw {
    double running, waiting, kv, kv_old;
    bool have_running, have_waiting, have_kv, have_kv_old;
    double prompt_tokens, gen_tokens;
    double queue_sum, queue_count, prefill_sum, prefill_count;
    double prompt_hist_sum, prompt_hist_count;
    double itl_sum, itl_count, tpot_sum, tpot_count;
    double prefix_hits, prefix_queries, gpu_hits, gpu_queries;
    double lora_ts;
    unsigned invalid;        /* values refused: NaN, +-Inf or negative */
    unsigned invalid_gauges; /* ...of them, state gauges (running, waiting, KV, LoRA) */
    int max_lora;
    char running_loras[256], waiting_loras[256];
} raw_t;

/* Series summed over label sets (several engines or models behind one
 * port), by name after "vllm:". */
static double *sum_field(raw_t *r, const char *n)
{
    static const struct {
        const char *name;
        size_t off;
    } sums[] = {
        { "prompt_tokens_total", offsetof(raw_t, prompt_tokens) },
        { "generation_tokens_total", offsetof(raw_t, gen_tokens) },
        { "request_queue_time_seconds_sum", offsetof(raw_t, queue_sum) },
        { "request_queue_time_seconds_count", offsetof(raw_t, queue_count) },
        { "request_prefill_time_seconds_sum", offsetof(raw_t, prefill_sum) },
        { "request_prefill_time_seconds_count", offsetof(raw_t, prefill_count) },
        { "request_prompt_tokens_sum", offsetof(raw_t, prompt_hist_sum) },
        { "request_prompt_tokens_count", offsetof(raw_t, prompt_hist_count) },
        { "inter_token_latency_seconds_sum", offsetof(raw_t, itl_sum) },
        { "inter_token_latency_seconds_count", offsetof(raw_t, itl_count) },
        { "time_per_output_token_seconds_sum", offsetof(raw_t, tpot_sum) },
        { "time_per_output_token_seconds_count", offsetof(raw_t, tpot_count) },
        { "prefix_cache_hits_total", offsetof(raw_t, prefix_hits) },
        { "prefix_cache_queries_total", offsetof(raw_t, prefix_queries) },
        { "gpu_prefix_cache_hits_total", offsetof(raw_t, gpu_hits) },
        { "gpu_prefix_cache_queries_total", offsetof(raw_t, gpu_queries) },
        { "num_requests_running", offsetof(raw_t, running) },
        { "num_requests_waiting", offsetof(raw_t, waiting) },
    };
    for (size_t i = 0; i < sizeof sums / sizeof *sums; i++)
        if (!strcmp(n, sums[i].name))
            return (double *)(void *)((char *)r + sums[i].off);
    return NULL;
}

static void on_sample(const brix_prom_sample_t *s, void *ud)
{
    raw_t *r = ud;
    const char *n = s->name;
    if (strncmp(n, "vllm:", 5))
        return;
    n += 5;
    double v = s->value;
    double *sum = sum_field(r, n);
    bool kv = !strcmp(n, "kv_cache_usage_perc"), kv_old = !strcmp(n, "gpu_cache_usage_perc");
    bool lora = !strcmp(n, "lora_requests_info");
    if (!sum && !kv && !kv_old && !lora)
        return;
    /* Every series read here is a count, a ratio, a sum of seconds or a
     * timestamp: never negative, never infinite or NaN. Such a value (a
     * broken or hostile engine) would poison every score it enters, so it
     * is refused as if missing (see update). */
    if (!isfinite(v) || v < 0) {
        r->invalid++;
        r->invalid_gauges += kv || kv_old || lora || !strncmp(n, "num_requests_", 13);
        return;
    }
    if (sum) {
        *sum += v;
        r->have_running |= !strcmp(n, "num_requests_running");
        r->have_waiting |= !strcmp(n, "num_requests_waiting");
    } else if (kv) {
        r->kv = v > r->kv ? v : r->kv;
        r->have_kv = true;
    } else if (kv_old) {
        r->kv_old = v > r->kv_old ? v : r->kv_old;
        r->have_kv_old = true;
    } else if (v >= r->lora_ts) {
        /* vLLM keeps every past label set; the newest timestamp is current */
        r->lora_ts = v;
        const char *ml = brix_prom_label(s, "max_lora");
        const char *run = brix_prom_label(s, "running_lora_adapters");
        const char *wait = brix_prom_label(s, "waiting_lora_adapters");
        r->max_lora = ml ? atoi(ml) : -1;
        snprintf(r->running_loras, sizeof r->running_loras, "%s", run ? run : "");
        snprintf(r->waiting_loras, sizeof r->waiting_loras, "%s", wait ? wait : "");
    }
}

static double smooth(double old, double now, bool have_old)
{
    return have_old ? BRIX_STATS_EWMA * now + (1 - BRIX_STATS_EWMA) * old : now;
}

/* Mean of a histogram over the last interval, or -1 when nothing finished. */
static double delta_mean(double sum, double count, double psum, double pcount)
{
    double dc = count - pcount, ds = sum - psum;
    return dc > 0 && ds >= 0 ? ds / dc : -1;
}

bool brix_engine_stats_update(const char *body, size_t len, double now_s, brix_scrape_state_t *st,
                              brix_engine_stats_t *stats)
{
    raw_t r;
    memset(&r, 0, sizeof r);
    r.max_lora = -1;
    brix_prom_parser_t p;
    brix_prom_parser_init(&p, 64 * 1024, on_sample, &r);
    brix_prom_parser_feed(&p, body, len);
    brix_prom_parser_finish(&p);
    brix_prom_parser_free(&p);
    st->invalid_values = r.invalid;
    if (r.invalid_gauges)
        return false; /* the load is unknown: as if not scraped */
    if (!r.have_running || !r.have_waiting)
        return false;
    /* the pre-0.10 names when the new ones are absent */
    if (!r.prefix_queries && r.gpu_queries) {
        r.prefix_queries = r.gpu_queries;
        r.prefix_hits = r.gpu_hits;
    }
    if (!r.itl_count && r.tpot_count) {
        r.itl_count = r.tpot_count;
        r.itl_sum = r.tpot_sum;
    }
    brix_engine_stats_t *s = stats;
    bool had = st->have_prev;
    s->running = r.running;
    s->waiting = r.waiting;
    s->kv_usage = r.have_kv ? r.kv : r.kv_old;
    s->busy = smooth(s->busy, r.running + r.waiting > 0 ? 1.0 : 0.0, had);
    s->max_lora = r.max_lora;
    memcpy(s->running_loras, r.running_loras, sizeof s->running_loras);
    memcpy(s->waiting_loras, r.waiting_loras, sizeof s->waiting_loras);
    if (r.invalid) {
        /* a counter or histogram is missing: no rates or means this time,
         * and the previous counters stay, so the next good scrape measures
         * over both intervals (and cannot mistake the gap for a restart) */
        st->restarted = false;
        return true;
    }
    double dt = now_s - st->t;
    /* counters restart with the engine: a drop means a reset, not a rate */
    bool monotonic = had && r.prompt_tokens >= st->prompt_tokens && r.gen_tokens >= st->gen_tokens;
    st->restarted = had && !monotonic;
    if (monotonic && dt > 0) {
        /* the first interval's rate is taken as it is, not averaged with 0 */
        bool hr = st->have_rates;
        st->have_rates = true;
        s->prompt_tps = smooth(s->prompt_tps, (r.prompt_tokens - st->prompt_tokens) / dt, hr);
        s->gen_tps = smooth(s->gen_tps, (r.gen_tokens - st->gen_tokens) / dt, hr);
        double q = delta_mean(r.queue_sum, r.queue_count, st->queue_sum, st->queue_count);
        if (q >= 0)
            s->queue_s = smooth(s->queue_s, q, s->queue_s > 0);
        double dp = r.prompt_hist_sum - st->prompt_hist_sum;
        double dpre = r.prefill_sum - st->prefill_sum;
        if (dp > 0 && dpre >= 0)
            s->prefill_s_per_tok =
                smooth(s->prefill_s_per_tok, dpre / dp, s->prefill_s_per_tok > 0);
        double dpc = r.prompt_hist_count - st->prompt_hist_count;
        if (dpc > 0)
            s->mean_prompt_tokens =
                smooth(s->mean_prompt_tokens, dp / dpc, s->mean_prompt_tokens > 0);
        double itl = delta_mean(r.itl_sum, r.itl_count, st->itl_sum, st->itl_count);
        if (itl >= 0)
            s->tpot_s = smooth(s->tpot_s, itl, s->tpot_s > 0);
        double dq = r.prefix_queries - st->prefix_queries;
        if (dq > 0) {
            s->prefix_hit_rate = smooth(s->prefix_hit_rate, (r.prefix_hits - st->prefix_hits) / dq,
                                        st->have_hit_rate);
            st->have_hit_rate = true;
        }
    }
    st->have_prev = true;
    st->t = now_s;
    st->prompt_tokens = r.prompt_tokens;
    st->gen_tokens = r.gen_tokens;
    st->queue_sum = r.queue_sum;
    st->queue_count = r.queue_count;
    st->prefill_sum = r.prefill_sum;
    st->prefill_count = r.prefill_count;
    st->prompt_hist_sum = r.prompt_hist_sum;
    st->prompt_hist_count = r.prompt_hist_count;
    st->itl_sum = r.itl_sum;
    st->itl_count = r.itl_count;
    st->prefix_hits = r.prefix_hits;
    st->prefix_queries = r.prefix_queries;
    return true;
}

bool brix_engine_stats_has_lora(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == n && !memcmp(p, name, n))
            return true;
        if (!e)
            break;
        p = e + 1;
    }
    return false;
}

int brix_engine_stats_count(const char *list)
{
    if (!*list)
        return 0;
    int n = 1;
    for (const char *p = list; *p; p++)
        n += *p == ',';
    return n;
}
