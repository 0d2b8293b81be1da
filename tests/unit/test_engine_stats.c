/*
 * Unit tests for gateway/engine_stats.h: what the gateway derives from
 * successive vLLM /metrics scrapes — gauges, rates from counter deltas,
 * histogram-delta means (queue time, prefill time per token, time per output
 * token), prefix-cache hit rate, EWMA smoothing, pre-0.10 metric names as
 * fallbacks, vllm:lora_requests_info (newest series wins), engine restarts
 * (counter resets), non-vLLM bodies, and the LoRA list helpers.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "gateway/engine_stats.h"

#include "leak_check.h"

#define EW BRIX_STATS_EWMA

static void near(double got, double want, const char *what)
{
    if (!(fabs(got - want) <= 1e-9 + 1e-9 * fabs(want)))
        fail_msg("%s: got %.12g, want %.12g", what, got, want);
}

/* One vLLM v0.11 exposition with the counters given. */
typedef struct counters {
    double running, waiting, kv;
    double prompt, gen;
    double queue_sum, queue_n;
    double prefill_sum, prefill_n;
    double ptok_sum, ptok_n;
    double itl_sum, itl_n;
    double hits, queries;
} counters_t;

static char *expo(const counters_t *c, const char *extra)
{
    brix_buf_t b = BRIX_BUF_INIT;
    brix_buf_printf(
        &b,
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        "vllm:num_requests_running{engine=\"0\",model_name=\"m\"} %g\n"
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        "vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} %g\n"
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        "vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} %g\n"
        "# TYPE vllm:prompt_tokens_total counter\n"
        "vllm:prompt_tokens_total{engine=\"0\",model_name=\"m\"} %g\n"
        "# TYPE vllm:generation_tokens_total counter\n"
        "vllm:generation_tokens_total{engine=\"0\",model_name=\"m\"} %g\n"
        "# TYPE vllm:request_queue_time_seconds histogram\n"
        "vllm:request_queue_time_seconds_bucket{engine=\"0\",le=\"0.3\",model_name=\"m\"} %g\n"
        "vllm:request_queue_time_seconds_bucket{engine=\"0\",le=\"+Inf\",model_name=\"m\"} %g\n"
        "vllm:request_queue_time_seconds_count{engine=\"0\",model_name=\"m\"} %g\n"
        "vllm:request_queue_time_seconds_sum{engine=\"0\",model_name=\"m\"} %g\n"
        "# TYPE vllm:request_prefill_time_seconds histogram\n"
        "vllm:request_prefill_time_seconds_bucket{engine=\"0\",le=\"+Inf\",model_name=\"m\"} %g\n"
        "vllm:request_prefill_time_seconds_count{engine=\"0\",model_name=\"m\"} %g\n"
        "vllm:request_prefill_time_seconds_sum{engine=\"0\",model_name=\"m\"} %g\n"
        "# TYPE vllm:request_prompt_tokens histogram\n"
        "vllm:request_prompt_tokens_bucket{engine=\"0\",le=\"+Inf\",model_name=\"m\"} %g\n"
        "vllm:request_prompt_tokens_count{engine=\"0\",model_name=\"m\"} %g\n"
        "vllm:request_prompt_tokens_sum{engine=\"0\",model_name=\"m\"} %g\n"
        "# TYPE vllm:inter_token_latency_seconds histogram\n"
        "vllm:inter_token_latency_seconds_bucket{engine=\"0\",le=\"+Inf\",model_name=\"m\"} %g\n"
        "vllm:inter_token_latency_seconds_count{engine=\"0\",model_name=\"m\"} %g\n"
        "vllm:inter_token_latency_seconds_sum{engine=\"0\",model_name=\"m\"} %g\n"
        "# TYPE vllm:prefix_cache_queries_total counter\n"
        "vllm:prefix_cache_queries_total{engine=\"0\",model_name=\"m\"} %g\n"
        "# TYPE vllm:prefix_cache_hits_total counter\n"
        "vllm:prefix_cache_hits_total{engine=\"0\",model_name=\"m\"} %g\n"
        "%s",
        c->running, c->waiting, c->kv, c->prompt, c->gen, c->queue_n, c->queue_n, c->queue_n,
        c->queue_sum, c->prefill_n, c->prefill_n, c->prefill_sum, c->ptok_n, c->ptok_n, c->ptok_sum,
        c->itl_n, c->itl_n, c->itl_sum, c->queries, c->hits, extra ? extra : "");
    return b.data;
}

static bool feed(const counters_t *c, const char *extra, double t, brix_scrape_state_t *st,
                 brix_engine_stats_t *s)
{
    char *body = expo(c, extra);
    bool ok = brix_engine_stats_update(body, strlen(body), t, st, s);
    brix_free(body);
    return ok;
}

static void init(brix_scrape_state_t *st, brix_engine_stats_t *s)
{
    memset(st, 0, sizeof *st);
    memset(s, 0, sizeof *s);
    s->max_lora = -1;
}

static const counters_t C1 = {
    .running = 3,
    .waiting = 2,
    .kv = 0.25,
    .prompt = 1000,
    .gen = 500,
    .queue_sum = 2.0,
    .queue_n = 10,
    .prefill_sum = 1.0,
    .prefill_n = 10,
    .ptok_sum = 1000,
    .ptok_n = 10,
    .itl_sum = 5.0,
    .itl_n = 500,
    .hits = 100,
    .queries = 1000,
};

/* 2 s later: +600 prompt, +400 gen tokens; 3 requests finished with 1.5 s
 * of queueing, 0.3 s of prefill for 600 prompt tokens; 400 ITL samples
 * summing 0.8 s; 150 of 300 queried tokens hit. */
static counters_t c2(void)
{
    counters_t c = C1;
    c.running = 0;
    c.waiting = 0;
    c.kv = 0.5;
    c.prompt += 600;
    c.gen += 400;
    c.queue_sum += 1.5;
    c.queue_n += 3;
    c.prefill_sum += 0.3;
    c.prefill_n += 3;
    c.ptok_sum += 600;
    c.ptok_n += 3;
    c.itl_sum += 0.8;
    c.itl_n += 400;
    c.hits += 150;
    c.queries += 300;
    return c;
}

static void test_gauges_first_scrape(void **state)
{
    (void)state;
    brix_scrape_state_t st;
    brix_engine_stats_t s;
    init(&st, &s);
    assert_true(feed(&C1, NULL, 10.0, &st, &s));
    near(s.running, 3, "running");
    near(s.waiting, 2, "waiting");
    near(s.kv_usage, 0.25, "kv_usage");
    near(s.busy, 1.0, "busy (first scrape, work on the engine)");
    /* one scrape: no rate, no interval mean yet */
    near(s.prompt_tps, 0, "prompt_tps");
    near(s.gen_tps, 0, "gen_tps");
    near(s.queue_s, 0, "queue_s");
    near(s.tpot_s, 0, "tpot_s");
    assert_true(st.have_prev);
    assert_int_equal(s.max_lora, -1);
    assert_string_equal(s.running_loras, "");
    /* label sets are summed (several engines behind one port); KV is the max */
    const char *two = "vllm:num_requests_running{engine=\"0\"} 3\n"
                      "vllm:num_requests_running{engine=\"1\"} 4\n"
                      "vllm:num_requests_waiting{engine=\"0\"} 1\n"
                      "vllm:num_requests_waiting{engine=\"1\"} 0\n"
                      "vllm:kv_cache_usage_perc{engine=\"0\"} 0.3\n"
                      "vllm:kv_cache_usage_perc{engine=\"1\"} 0.7\n";
    init(&st, &s);
    assert_true(brix_engine_stats_update(two, strlen(two), 1.0, &st, &s));
    near(s.running, 7, "summed running");
    near(s.waiting, 1, "summed waiting");
    near(s.kv_usage, 0.7, "max kv");
}

static void test_rates_and_means(void **state)
{
    (void)state;
    brix_scrape_state_t st;
    brix_engine_stats_t s;
    init(&st, &s);
    assert_true(feed(&C1, NULL, 10.0, &st, &s));
    counters_t c = c2();
    assert_true(feed(&c, NULL, 12.0, &st, &s));
    near(s.running, 0, "running");
    near(s.kv_usage, 0.5, "kv");
    /* means of what finished in the interval, first values taken as they are */
    near(s.queue_s, 0.5, "queue_s = 1.5 s / 3");
    near(s.prefill_s_per_tok, 0.3 / 600, "prefill per token");
    near(s.mean_prompt_tokens, 200, "mean prompt tokens");
    near(s.tpot_s, 0.8 / 400, "tpot from ITL");
    /* idle now: busy decays by the EWMA */
    near(s.busy, (1 - EW) * 1.0, "busy");
    /* rates exist and are positive, and are in proportion 300 : 200 */
    assert_true(s.prompt_tps > 0 && s.gen_tps > 0);
    near(s.prompt_tps / s.gen_tps, 1.5, "prompt/gen rate ratio");
    assert_true(s.prefix_hit_rate > 0 && s.prefix_hit_rate <= 0.5 + 1e-12);
}

/* The first interval's rate is the measured one (an EWMA starts from its
 * first sample, as the histogram means here do), not a fraction of it. */
static void test_first_interval_rates_unbiased(void **state)
{
    (void)state;
    brix_scrape_state_t st;
    brix_engine_stats_t s;
    init(&st, &s);
    assert_true(feed(&C1, NULL, 10.0, &st, &s));
    counters_t c = c2();
    assert_true(feed(&c, NULL, 12.0, &st, &s));
    near(s.prompt_tps, 600.0 / 2, "prompt tokens/s over the first interval");
    near(s.gen_tps, 400.0 / 2, "generation tokens/s over the first interval");
    near(s.prefix_hit_rate, 150.0 / 300, "prefix hit rate over the first interval");
}

static void test_ewma_smoothing(void **state)
{
    (void)state;
    brix_scrape_state_t st;
    brix_engine_stats_t s;
    init(&st, &s);
    counters_t c = C1;
    assert_true(feed(&c, NULL, 10.0, &st, &s));
    c = c2();
    assert_true(feed(&c, NULL, 12.0, &st, &s));
    brix_engine_stats_t p = s;
    /* 1 s: +100 prompt, +50 gen, one request queued 0.1 s, 10 ITL samples of
     * 0.004 s, 10 of 100 queried hit */
    c.prompt += 100;
    c.gen += 50;
    c.queue_sum += 0.1;
    c.queue_n += 1;
    c.prefill_sum += 0.01;
    c.prefill_n += 1;
    c.ptok_sum += 100;
    c.ptok_n += 1;
    c.itl_sum += 0.04;
    c.itl_n += 10;
    c.hits += 10;
    c.queries += 100;
    c.running = 1;
    assert_true(feed(&c, NULL, 13.0, &st, &s));
    near(s.prompt_tps, EW * 100 + (1 - EW) * p.prompt_tps, "prompt_tps EWMA");
    near(s.gen_tps, EW * 50 + (1 - EW) * p.gen_tps, "gen_tps EWMA");
    near(s.queue_s, EW * 0.1 + (1 - EW) * p.queue_s, "queue_s EWMA");
    near(s.prefill_s_per_tok, EW * 0.0001 + (1 - EW) * p.prefill_s_per_tok, "prefill EWMA");
    near(s.mean_prompt_tokens, EW * 100 + (1 - EW) * p.mean_prompt_tokens, "mean prompt EWMA");
    near(s.tpot_s, EW * 0.004 + (1 - EW) * p.tpot_s, "tpot EWMA");
    near(s.prefix_hit_rate, EW * 0.1 + (1 - EW) * p.prefix_hit_rate, "hit rate EWMA");
    near(s.busy, EW * 1 + (1 - EW) * p.busy, "busy EWMA");
    /* a quiet second: rates decay, means keep their value (nothing finished) */
    p = s;
    c.running = 0;
    assert_true(feed(&c, NULL, 14.0, &st, &s));
    near(s.prompt_tps, (1 - EW) * p.prompt_tps, "quiet prompt_tps");
    near(s.queue_s, p.queue_s, "quiet queue_s");
    near(s.tpot_s, p.tpot_s, "quiet tpot");
    near(s.prefill_s_per_tok, p.prefill_s_per_tok, "quiet prefill");
    near(s.prefix_hit_rate, p.prefix_hit_rate, "quiet hit rate");
    /* the same instant twice: no division by zero */
    p = s;
    assert_true(feed(&c, NULL, 14.0, &st, &s));
    assert_true(isfinite(s.prompt_tps) && isfinite(s.gen_tps));
    near(s.prompt_tps, p.prompt_tps, "dt = 0 keeps the rate");
}

static void test_counter_reset(void **state)
{
    (void)state;
    brix_scrape_state_t st;
    brix_engine_stats_t s;
    init(&st, &s);
    counters_t c = C1;
    assert_true(feed(&c, NULL, 10.0, &st, &s));
    c = c2();
    assert_true(feed(&c, NULL, 12.0, &st, &s));
    brix_engine_stats_t p = s;
    /* the engine restarted: every counter starts over, small */
    counters_t r = { .running = 1,
                     .prompt = 50,
                     .gen = 20,
                     .queue_sum = 0.01,
                     .queue_n = 1,
                     .prefill_sum = 0.001,
                     .prefill_n = 1,
                     .ptok_sum = 50,
                     .ptok_n = 1,
                     .itl_sum = 0.02,
                     .itl_n = 19,
                     .hits = 0,
                     .queries = 50 };
    assert_true(feed(&r, NULL, 13.0, &st, &s));
    assert_true(s.prompt_tps >= 0 && s.gen_tps >= 0 && s.queue_s >= 0 && s.tpot_s >= 0);
    assert_true(s.prefix_hit_rate >= 0 && s.prefix_hit_rate <= 1);
    assert_true(s.prefill_s_per_tok >= 0 && s.mean_prompt_tokens >= 0);
    near(s.prompt_tps, p.prompt_tps, "rate kept over a reset");
    near(s.gen_tps, p.gen_tps, "gen rate kept over a reset");
    near(s.running, 1, "gauges follow the new engine");
    /* the next interval is measured from the new baseline */
    p = s;
    r.prompt += 200;
    r.gen += 100;
    assert_true(feed(&r, NULL, 14.0, &st, &s));
    near(s.prompt_tps, EW * 200 + (1 - EW) * p.prompt_tps, "rate after the reset");
    near(s.gen_tps, EW * 100 + (1 - EW) * p.gen_tps, "gen rate after the reset");
}

static void test_old_names(void **state)
{
    (void)state;
    /* vLLM before 0.10: gpu_cache_usage_perc, gpu_prefix_cache_*, and
     * time_per_output_token_seconds instead of inter_token_latency_seconds */
    const char *a = "vllm:num_requests_running 1\n"
                    "vllm:num_requests_waiting 0\n"
                    "vllm:gpu_cache_usage_perc 0.4\n"
                    "vllm:gpu_prefix_cache_queries_total 100\n"
                    "vllm:gpu_prefix_cache_hits_total 10\n"
                    "vllm:time_per_output_token_seconds_sum 1.0\n"
                    "vllm:time_per_output_token_seconds_count 100\n";
    const char *b = "vllm:num_requests_running 1\n"
                    "vllm:num_requests_waiting 0\n"
                    "vllm:gpu_cache_usage_perc 0.6\n"
                    "vllm:gpu_prefix_cache_queries_total 300\n"
                    "vllm:gpu_prefix_cache_hits_total 110\n"
                    "vllm:time_per_output_token_seconds_sum 1.5\n"
                    "vllm:time_per_output_token_seconds_count 150\n";
    brix_scrape_state_t st;
    brix_engine_stats_t s;
    init(&st, &s);
    assert_true(brix_engine_stats_update(a, strlen(a), 1.0, &st, &s));
    near(s.kv_usage, 0.4, "gpu_cache_usage_perc");
    assert_true(brix_engine_stats_update(b, strlen(b), 2.0, &st, &s));
    near(s.kv_usage, 0.6, "gpu_cache_usage_perc");
    near(s.tpot_s, 0.5 / 50, "tpot from time_per_output_token_seconds");
    /* 100 hits of 200 queried */
    assert_true(s.prefix_hit_rate > 0 && s.prefix_hit_rate <= 0.5 + 1e-12);
    /* both names: the new one wins */
    const char *both = "vllm:num_requests_running 1\n"
                       "vllm:num_requests_waiting 0\n"
                       "vllm:gpu_cache_usage_perc 0.9\n"
                       "vllm:kv_cache_usage_perc 0.2\n";
    init(&st, &s);
    assert_true(brix_engine_stats_update(both, strlen(both), 1.0, &st, &s));
    near(s.kv_usage, 0.2, "kv_cache_usage_perc wins");
}

static void test_old_prefix_names_rate(void **state)
{
    (void)state;
    const char *a = "vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n"
                    "vllm:gpu_prefix_cache_queries_total 100\n"
                    "vllm:gpu_prefix_cache_hits_total 10\n";
    const char *b = "vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n"
                    "vllm:gpu_prefix_cache_queries_total 300\n"
                    "vllm:gpu_prefix_cache_hits_total 110\n";
    const char *c = "vllm:num_requests_running 0\nvllm:num_requests_waiting 0\n"
                    "vllm:gpu_prefix_cache_queries_total 400\n"
                    "vllm:gpu_prefix_cache_hits_total 190\n";
    brix_scrape_state_t st;
    brix_engine_stats_t s;
    init(&st, &s);
    assert_true(brix_engine_stats_update(a, strlen(a), 1.0, &st, &s));
    assert_true(brix_engine_stats_update(b, strlen(b), 2.0, &st, &s));
    double h1 = s.prefix_hit_rate;
    assert_true(h1 > 0);
    assert_true(brix_engine_stats_update(c, strlen(c), 3.0, &st, &s));
    near(s.prefix_hit_rate, EW * 0.8 + (1 - EW) * h1, "old-name hit rate EWMA (80 of 100)");
}

static void test_lora_info(void **state)
{
    (void)state;
    counters_t c = C1;
    /* vLLM keeps every label set it ever exported; the value is the time */
    const char *lora = "# TYPE vllm:lora_requests_info gauge\n"
                       "vllm:lora_requests_info{max_lora=\"1\",running_lora_adapters=\"a\","
                       "waiting_lora_adapters=\"\"} 1.7000001e+09\n"
                       "vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"c,d\","
                       "waiting_lora_adapters=\"e\"} 1.7000003e+09\n"
                       "vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"b\","
                       "waiting_lora_adapters=\"\"} 1.7000002e+09\n";
    brix_scrape_state_t st;
    brix_engine_stats_t s;
    init(&st, &s);
    assert_true(feed(&c, lora, 1.0, &st, &s));
    assert_int_equal(s.max_lora, 4);
    assert_string_equal(s.running_loras, "c,d");
    assert_string_equal(s.waiting_loras, "e");
    /* newest first in the text */
    const char *lora2 = "vllm:lora_requests_info{max_lora=\"3\",running_lora_adapters=\"\","
                        "waiting_lora_adapters=\"\"} 1.7000009e+09\n"
                        "vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"c,d\","
                        "waiting_lora_adapters=\"e\"} 1.7000003e+09\n";
    assert_true(feed(&c, lora2, 2.0, &st, &s));
    assert_int_equal(s.max_lora, 3);
    assert_string_equal(s.running_loras, "");
    assert_string_equal(s.waiting_loras, "");
    /* gone from the exposition: unknown again */
    assert_true(feed(&c, NULL, 3.0, &st, &s));
    assert_int_equal(s.max_lora, -1);
    assert_string_equal(s.running_loras, "");
}

static void test_not_vllm(void **state)
{
    (void)state;
    brix_scrape_state_t st;
    brix_engine_stats_t s;
    init(&st, &s);
    counters_t c = C1;
    assert_true(feed(&c, NULL, 1.0, &st, &s));
    brix_engine_stats_t before = s;
    brix_scrape_state_t st_before = st;
    static const char *bodies[] = {
        "",
        "# HELP up Up.\n# TYPE up gauge\nup 1\n",
        "num_requests_running 3\nnum_requests_waiting 1\n",
        "sglang:num_running_reqs 3\nsglang:num_queue_reqs 1\n",
        "<html><body>not metrics</body></html>",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++) {
        assert_false(
            brix_engine_stats_update(bodies[i], strlen(bodies[i]), 2.0 + (double)i, &st, &s));
        assert_memory_equal(&s, &before, sizeof s);
        assert_memory_equal(&st, &st_before, sizeof st);
    }
}

/* A NaN, infinite or negative value in a series the gateway reads is refused
 * as missing and counted: in a state gauge (running, waiting, KV, LoRA) it
 * fails the update (nothing changes); in a counter or histogram the gauges
 * are taken but no rate is computed and the previous counters stay, so the
 * next good scrape measures over both intervals. The same in a series the
 * gateway does not read is ignored. */
static void test_invalid_values(void **state)
{
    (void)state;
    brix_scrape_state_t st;
    brix_engine_stats_t s;
    init(&st, &s);
    counters_t c = C1;
    assert_true(feed(&c, NULL, 1.0, &st, &s));
    assert_int_equal(st.invalid_values, 0);
    static const char *gauges[] = {
        "vllm:num_requests_running{engine=\"1\",model_name=\"m\"} NaN\n",
        "vllm:num_requests_waiting{engine=\"1\",model_name=\"m\"} +Inf\n",
        "vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"m\"} -Inf\n",
        "vllm:lora_requests_info{max_lora=\"1\",running_lora_adapters=\"x\","
        "waiting_lora_adapters=\"\"} NaN\n",
    };
    counters_t c2 = C1;
    c2.prompt += 100;
    c2.running = 7;
    for (size_t i = 0; i < sizeof gauges / sizeof *gauges; i++) {
        brix_engine_stats_t before = s;
        brix_scrape_state_t st_before = st;
        assert_false(feed(&c2, gauges[i], 2.0 + (double)i, &st, &s));
        assert_int_equal(st.invalid_values, 1);
        assert_memory_equal(&s, &before, sizeof s);
        st.invalid_values = st_before.invalid_values;
        assert_memory_equal(&st, &st_before, sizeof st);
    }
    static const char *counters[] = {
        "vllm:prompt_tokens_total{engine=\"1\",model_name=\"m\"} -1\n",
        "vllm:prefix_cache_hits_total{engine=\"1\",model_name=\"m\"} 1e400\n",
        "vllm:request_queue_time_seconds_sum{engine=\"1\",model_name=\"m\"} -0.5\n",
    };
    double tps = s.prompt_tps;
    for (size_t i = 0; i < sizeof counters / sizeof *counters; i++) {
        brix_scrape_state_t st_before = st;
        assert_true(feed(&c2, counters[i], 10.0 + (double)i, &st, &s));
        assert_int_equal(st.invalid_values, 1);
        near(s.running, 7, "running taken from a scrape with a refused counter");
        near(s.prompt_tps, tps, "no rate from a scrape with a refused counter");
        assert_false(st.restarted);
        st.invalid_values = st_before.invalid_values;
        assert_memory_equal(&st, &st_before, sizeof st);
    }
    /* not read by the gateway: no effect; the next good scrape measures the
     * prompt rate from the last good one (t = 1) */
    assert_true(
        feed(&c2, "vllm:spec_decode_draft_acceptance_rate{engine=\"0\"} NaN\n", 21.0, &st, &s));
    assert_int_equal(st.invalid_values, 0);
    assert_true(s.prompt_tps != tps);
}

static void test_lora_helpers(void **state)
{
    (void)state;
    assert_true(brix_engine_stats_has_lora("a,b,c", "a"));
    assert_true(brix_engine_stats_has_lora("a,b,c", "b"));
    assert_true(brix_engine_stats_has_lora("a,b,c", "c"));
    assert_true(brix_engine_stats_has_lora("sql-lora", "sql-lora"));
    assert_false(brix_engine_stats_has_lora("a,b,c", "d"));
    assert_false(brix_engine_stats_has_lora("ab,c", "a"));
    assert_false(brix_engine_stats_has_lora("a,bc", "b"));
    assert_false(brix_engine_stats_has_lora("a,b", "a,b,c"));
    assert_false(brix_engine_stats_has_lora("", "a"));
    assert_int_equal(brix_engine_stats_count(""), 0);
    assert_int_equal(brix_engine_stats_count("a"), 1);
    assert_int_equal(brix_engine_stats_count("a,b"), 2);
    assert_int_equal(brix_engine_stats_count("x,y,z"), 3);
}

int main(void)
{
    brix_alloc_init();
    const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, leak_setup, leak_teardown)
        T(test_gauges_first_scrape),
        T(test_rates_and_means),
        T(test_first_interval_rates_unbiased),
        T(test_ewma_smoothing),
        T(test_counter_reset),
        T(test_old_names),
        T(test_old_prefix_names_rate),
        T(test_lora_info),
        T(test_not_vllm),
        T(test_invalid_values),
        T(test_lora_helpers),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
