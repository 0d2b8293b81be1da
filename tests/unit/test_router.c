/*
 * Unit tests for the gateway router (gateway/router.h) and its strategies
 * (gateway/strategies/): each strategy's choice on hand-built fleet
 * snapshots — fresh and stale metrics, ties, saturated and ejected pods,
 * excluded (already tried) pods, adapters served nowhere — weighted mixes
 * and their parsing, explanations, and that the gateway's prompt hashing
 * counts the same tokens as the engine's tokenizer (prompt.h).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <math.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/json_scan.h"
#include "core/tokenizer.h"
#include "gateway/router.h"

#include "leak_check.h"

/* ------------------------------------------------------------ fixture -- */

#define MAXP 8
#define NOW  1000000000000ull /* ctx->now_ns */

enum { M_BASE, M_LORA, M_GHOST, M_N };

typedef struct fleet {
    brix_fleet_snap_t snap;
    brix_pod_view_t views[MAXP];
    brix_model_entry_t models[M_N];
    uint32_t mp[M_N][MAXP];
    brix_prefix_index_t *ix;
    brix_route_params_t params;
    uint64_t rng, rr;
    brix_arena_t arena;
    brix_http_header_t hdr[8];
    char hname[8][64], hval[8][256];
    brix_http_req_t req;
    brix_req_fields_t fields;
    bool have_fields;
    char *body;
    uint32_t cand[MAXP];
    double score[MAXP];
    uint32_t exclude[MAXP];
    size_t nexclude;
    bool want_explain;
    brix_buf_t explain;
    brix_route_ctx_t ctx;
    bool probe;
} fleet_t;

static fleet_t *fleet_new(size_t npods)
{
    fleet_t *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->snap.pods = f->views;
    f->snap.npods = npods;
    for (size_t i = 0; i < npods; i++) {
        char name[32], url[64];
        snprintf(name, sizeof name, "127.0.0.1:%d", 8000 + (int)i);
        snprintf(url, sizeof url, "http://%s", name);
        f->views[i].pod = brix_pod_new((uint32_t)i, name, url, "127.0.0.1", 8000 + (int)i);
        assert_non_null(f->views[i].pod);
        f->views[i].healthy = true;
        f->views[i].metrics_fresh = false;
        f->views[i].stats.max_lora = -1;
        f->snap.nhealthy++;
    }
    f->models[M_BASE].name = "m";
    f->models[M_LORA].name = "lora-a";
    f->models[M_LORA].parent = "m";
    f->models[M_GHOST].name = "ghost-adapter";
    f->models[M_GHOST].parent = "m";
    for (int m = 0; m < M_N; m++)
        f->models[m].pods = f->mp[m];
    for (size_t i = 0; i < npods; i++) {
        f->mp[M_BASE][i] = (uint32_t)i;
        f->mp[M_LORA][i] = (uint32_t)i;
    }
    f->models[M_BASE].npods = npods;
    f->models[M_LORA].npods = npods;
    f->models[M_GHOST].npods = 0; /* an adapter no pod has */
    f->snap.models = f->models;
    f->snap.nmodels = M_N;
    f->ix = brix_prefix_index_new(4096);
    assert_non_null(f->ix);
    brix_route_params_default(&f->params);
    f->rng = 12345;
    brix_arena_init(&f->arena, 4096);
    f->req.headers = f->hdr;
    return f;
}

static void fleet_free(fleet_t *f)
{
    for (size_t i = 0; i < f->snap.npods; i++)
        brix_pod_unref(f->views[i].pod);
    brix_prefix_index_free(f->ix);
    brix_arena_free(&f->arena);
    brix_buf_free(&f->explain);
    brix_free(f->body);
    free(f);
}

static brix_pod_t *pod(fleet_t *f, size_t i)
{
    return f->views[i].pod;
}

static void fresh(fleet_t *f, size_t i)
{
    f->views[i].metrics_fresh = true;
}

static void set_header(fleet_t *f, const char *name, const char *value)
{
    for (size_t i = 0; i < f->req.nheaders; i++) {
        if (!strcmp(f->hname[i], name)) {
            snprintf(f->hval[i], sizeof f->hval[i], "%s", value);
            f->hdr[i].value_len = strlen(value);
            return;
        }
    }
    size_t i = f->req.nheaders++;
    assert_true(i < 8);
    snprintf(f->hname[i], sizeof f->hname[i], "%s", name);
    snprintf(f->hval[i], sizeof f->hval[i], "%s", value);
    f->hdr[i].name = f->hname[i];
    f->hdr[i].value = f->hval[i];
    f->hdr[i].name_len = strlen(name);
    f->hdr[i].value_len = strlen(value);
}

static void clear_headers(fleet_t *f)
{
    f->req.nheaders = 0;
}

/* Fills a brix_req_fields_t from a JSON body, as the gateway's scan does. */
static int on_member(const char *k, size_t kl, const brix_json_val_t *v, void *ud)
{
    brix_req_fields_t *fl = ud;
    if (brix_json_key_is(k, kl, "messages"))
        fl->messages = *v;
    else if (brix_json_key_is(k, kl, "prompt"))
        fl->prompt = *v;
    else if (brix_json_key_is(k, kl, "input"))
        fl->input = *v;
    else if (brix_json_key_is(k, kl, "stream"))
        fl->stream = v->kind == BRIX_JSON_TRUE;
    return 0;
}

static void parse_fields(const char *body, const char *model, brix_req_fields_t *out)
{
    memset(out, 0, sizeof *out);
    out->messages.kind = out->prompt.kind = out->input.kind = BRIX_JSON_NULL;
    size_t off;
    const char *what;
    assert_int_equal(brix_json_scan(body, strlen(body), on_member, out, &off, &what),
                     BRIX_JSON_SCAN_OK);
    out->model = model;
}

static void set_body(fleet_t *f, const char *body)
{
    brix_free(f->body);
    f->body = brix_strdup(body);
    assert_non_null(f->body);
    parse_fields(f->body, "m", &f->fields);
    f->have_fields = true;
}

/* A completions body whose prompt is n token ids (seed, seed+1, ...):
 * exactly n tokens, n / 16 full blocks. */
static void set_prompt_ids(fleet_t *f, uint32_t seed, size_t n)
{
    brix_buf_t b = BRIX_BUF_INIT;
    brix_buf_append_str(&b, "{\"model\":\"m\",\"prompt\":[");
    for (size_t i = 0; i < n; i++)
        brix_buf_printf(&b, "%s%u", i ? "," : "", seed + (uint32_t)i);
    brix_buf_append_str(&b, "],\"max_tokens\":4}");
    set_body(f, b.data);
    brix_buf_free(&b);
}

/* The prompt's block hashes under `model`, copied to out (returns count). */
static size_t prompt_hashes(fleet_t *f, const char *model, uint64_t *out, size_t cap)
{
    brix_arena_t a;
    brix_arena_init(&a, 4096);
    brix_prompt_t pr;
    assert_int_equal(brix_prompt_hash(&f->fields, model, 16, 2048, &a, &pr), 0);
    size_t n = pr.nhashes < cap ? pr.nhashes : cap;
    memcpy(out, pr.hashes, n * sizeof *out);
    brix_arena_free(&a);
    return n;
}

/* Records that pod i holds the first nblocks blocks of the current prompt. */
static void hold(fleet_t *f, size_t i, brix_prefix_kind_t kind, size_t nblocks, const char *model)
{
    uint64_t hs[256];
    size_t n = prompt_hashes(f, model, hs, 256);
    assert_true(nblocks <= n);
    brix_prefix_index_add(f->ix, kind, hs, nblocks, pod(f, i)->id);
}

static int route_sel(fleet_t *f, size_t model, const brix_strategy_sel_t *sel, bool commit)
{
    brix_arena_reset(&f->arena);
    brix_buf_reset(&f->explain);
    f->ctx = (brix_route_ctx_t){
        .snap = &f->snap,
        .model = &f->models[model],
        .req = &f->req,
        .fields = f->have_fields ? &f->fields : NULL,
        .now_ns = NOW,
        .rng = &f->rng,
        .rr = &f->rr,
        .exclude = f->exclude,
        .nexclude = f->nexclude,
        .params = &f->params,
        .index = f->ix,
        .precise = &f->snap.precise,
        .arena = &f->arena,
        .explain = f->want_explain ? &f->explain : NULL,
        .cand = f->cand,
        .score = f->score,
    };
    uint32_t idx = UINT32_MAX;
    f->probe = false;
    if (brix_route(&f->ctx, sel, &idx, &f->probe) != BRIX_ROUTE_OK)
        return -1;
    assert_true(idx < f->snap.npods);
    if (commit)
        brix_route_commit(&f->ctx, idx);
    return (int)idx;
}

static int route_m(fleet_t *f, size_t model, const char *strategy)
{
    brix_strategy_sel_t sel;
    char err[256];
    int rc = brix_strategy_parse(strategy, &sel, err, sizeof err);
    if (rc)
        fail_msg("strategy '%s' rejected: %s", strategy, err);
    return route_sel(f, model, &sel, false);
}

static int route(fleet_t *f, const char *strategy)
{
    return route_m(f, M_BASE, strategy);
}

/* Counts the pods chosen over n routings. */
static void histogram(fleet_t *f, size_t model, const char *strategy, int n, int *counts)
{
    for (size_t i = 0; i < MAXP; i++)
        counts[i] = 0;
    for (int k = 0; k < n; k++) {
        int p = route_m(f, model, strategy);
        assert_true(p >= 0);
        counts[p]++;
    }
}

/* Score the router left for snapshot pod i (candidates are in model order). */
static double score_of(fleet_t *f, size_t i)
{
    for (size_t k = 0; k < f->ctx.ncand; k++)
        if (f->ctx.cand[k] == i)
            return f->ctx.score[k];
    fail_msg("pod %zu is not a candidate", i);
    return NAN;
}

/* ------------------------------------------------------------- basics -- */

static void test_random_uses_every_pod(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(2);
    int c[MAXP];
    histogram(f, M_BASE, "random", 400, c);
    assert_true(c[0] > 120 && c[1] > 120);
    assert_int_equal(c[0] + c[1], 400);
    /* load does not matter to random */
    atomic_store(&pod(f, 0)->inflight, 50);
    histogram(f, M_BASE, "random", 400, c);
    assert_true(c[0] > 120 && c[1] > 120);
    fleet_free(f);
}

static void test_round_robin_alternates(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(3);
    int prev = route(f, "round-robin");
    int seen[3] = { 0 };
    seen[prev]++;
    for (int k = 1; k < 30; k++) {
        int p = route(f, "round-robin");
        assert_int_equal(p, (prev + 1) % 3);
        seen[p]++;
        prev = p;
    }
    assert_int_equal(seen[0], 10);
    assert_int_equal(seen[1], 10);
    assert_int_equal(seen[2], 10);
    /* the cursor advances per decision, and load does not matter */
    atomic_store(&pod(f, (size_t)((prev + 1) % 3))->inflight, 99);
    assert_int_equal(route(f, "round-robin"), (prev + 1) % 3);
    fleet_free(f);
}

static void test_least_request_fresh_and_stale(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(2);
    atomic_store(&pod(f, 0)->inflight, 1);
    atomic_store(&pod(f, 1)->inflight, 3);
    /* stale: only the gateway's own in-flight count */
    f->views[0].stats.running = 5;
    f->views[0].stats.waiting = 2;
    for (int k = 0; k < 20; k++)
        assert_int_equal(route(f, "least-request"), 0);
    assert_true(score_of(f, 0) == 1.0 && score_of(f, 1) == 3.0);
    /* fresh: in-flight + running + waiting = 8 > 3 */
    fresh(f, 0);
    fresh(f, 1);
    for (int k = 0; k < 20; k++)
        assert_int_equal(route(f, "least-request"), 1);
    assert_true(score_of(f, 0) == 8.0 && score_of(f, 1) == 3.0);
    /* brix_route_load says the same */
    route(f, "least-request");
    for (size_t k = 0; k < f->ctx.ncand; k++)
        assert_true(brix_route_load(&f->ctx, k) == (f->ctx.cand[k] == 0 ? 8.0 : 3.0));
    /* waiting alone counts too */
    f->views[0].stats.running = 0;
    f->views[0].stats.waiting = 0;
    f->views[1].stats.waiting = 4;
    assert_int_equal(route(f, "least-request"), 0);
    /* the gateway's requests the scrape already counted are not counted
     * twice: 4 in flight then and now, 4 running -> 4, not 8 */
    atomic_store(&pod(f, 0)->inflight, 4);
    f->views[0].inflight_at_scrape = 4;
    f->views[0].stats.running = 4;
    f->views[1].stats.waiting = 0;
    f->views[1].stats.running = 5; /* 3 in flight now, 0 at the scrape: 5 + 3 */
    route(f, "least-request");
    for (size_t k = 0; k < f->ctx.ncand; k++)
        assert_true(brix_route_load(&f->ctx, k) == (f->ctx.cand[k] == 0 ? 4.0 : 8.0));
    /* requests finished since the scrape lower it, never below in flight */
    atomic_store(&pod(f, 0)->inflight, 1);
    f->views[0].stats.running = 2; /* 2 + 1 - 4 < 1 */
    route(f, "least-request");
    for (size_t k = 0; k < f->ctx.ncand; k++)
        if (f->ctx.cand[k] == 0)
            assert_true(brix_route_load(&f->ctx, k) == 1.0);
    fleet_free(f);
}

static void test_power_of_two(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(3);
    atomic_store(&pod(f, 0)->inflight, 0);
    atomic_store(&pod(f, 1)->inflight, 5);
    atomic_store(&pod(f, 2)->inflight, 10);
    int c[MAXP];
    histogram(f, M_BASE, "power-of-two", 900, c);
    /* the lightest wins whenever drawn (>= 5/9 of draws), the heaviest only
     * when drawn twice (1/9 with replacement, 0 without) */
    assert_true(c[0] > 430);
    assert_true(c[2] < 180);
    /* random, not least-request: the middle pod wins sometimes */
    assert_true(c[1] > 100);
    fleet_free(f);
}

/* --------------------------------------------------- metric strategies -- */

typedef struct metric_case {
    const char *strategy;
    void (*set)(brix_engine_stats_t *s, int good);
} metric_case_t;

static void set_tput(brix_engine_stats_t *s, int good)
{
    /* 2*prompt + gen: good = 2*10 + 150 = 170 < bad = 2*100 + 10 = 210, though
     * good has the higher prompt+gen sum */
    s->prompt_tps = good ? 10 : 100;
    s->gen_tps = good ? 150 : 10;
}
static void set_kv(brix_engine_stats_t *s, int good)
{
    s->kv_usage = good ? 0.2 : 0.8;
}
static void set_busy(brix_engine_stats_t *s, int good)
{
    s->busy = good ? 0.1 : 0.9;
}
static void set_util(brix_engine_stats_t *s, int good)
{
    s->running = good ? 2 : 8;
}
static void set_latency(brix_engine_stats_t *s, int good)
{
    s->queue_s = good ? 0.05 : 0.5;
    s->prefill_s_per_tok = 0.0001;
    s->tpot_s = good ? 0.01 : 0.02;
}

static const metric_case_t metric_cases[] = {
    { "throughput", set_tput },        { "least-kv-cache", set_kv },
    { "least-gpu-cache", set_kv },     { "least-busy-time", set_busy },
    { "least-utilization", set_util }, { "least-latency", set_latency },
};

static void test_metric_strategies_prefer_better_metric(void **state)
{
    (void)state;
    for (size_t c = 0; c < sizeof metric_cases / sizeof *metric_cases; c++) {
        for (int good = 0; good < 2; good++) {
            fleet_t *f = fleet_new(2);
            fresh(f, 0);
            fresh(f, 1);
            metric_cases[c].set(&f->views[0].stats, good);
            metric_cases[c].set(&f->views[1].stats, !good);
            /* the gateway's in-flight count points the other way: it only
             * breaks ties */
            atomic_store(&pod(f, good ? 0 : 1)->inflight, 3);
            for (int k = 0; k < 10; k++) {
                int p = route(f, metric_cases[c].strategy);
                if (p != (good ? 0 : 1))
                    fail_msg("%s: chose pod %d, want %d", metric_cases[c].strategy, p,
                             good ? 0 : 1);
            }
            fleet_free(f);
        }
    }
}

static void test_metric_strategies_stale_loses(void **state)
{
    (void)state;
    for (size_t c = 0; c < sizeof metric_cases / sizeof *metric_cases; c++) {
        fleet_t *f = fleet_new(2);
        /* pod 0 has the better numbers, but they are stale */
        metric_cases[c].set(&f->views[0].stats, 1);
        metric_cases[c].set(&f->views[1].stats, 0);
        fresh(f, 1);
        for (int k = 0; k < 10; k++) {
            int p = route(f, metric_cases[c].strategy);
            if (p != 1)
                fail_msg("%s: chose the stale pod", metric_cases[c].strategy);
        }
        fleet_free(f);
    }
}

static void test_least_latency_uses_prompt_length(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(2);
    fresh(f, 0);
    fresh(f, 1);
    /* pod 0: queues 0.3 s but prefills fast; pod 1: no queue, slow prefill */
    f->views[0].stats.queue_s = 0.3;
    f->views[0].stats.prefill_s_per_tok = 0.00001;
    f->views[1].stats.queue_s = 0.0;
    f->views[1].stats.prefill_s_per_tok = 0.001;
    set_prompt_ids(f, 1000, 1000); /* long: pod 1 needs 1 s of prefill */
    assert_int_equal(route(f, "least-latency"), 0);
    set_prompt_ids(f, 1000, 20); /* short: 0.02 s on pod 1 */
    assert_int_equal(route(f, "least-latency"), 1);
    /* no prompt known: the pod's mean prompt length (or 10) stands in */
    f->have_fields = false;
    f->views[0].stats.mean_prompt_tokens = 2000;
    f->views[1].stats.mean_prompt_tokens = 2000;
    assert_int_equal(route(f, "least-latency"), 0);
    f->views[0].stats.mean_prompt_tokens = 0;
    f->views[1].stats.mean_prompt_tokens = 0;
    assert_int_equal(route(f, "least-latency"), 1);
    fleet_free(f);
}

/* --------------------------------------------------------- prefix-cache -- */

static void test_prefix_cache_longest_match(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(3);
    set_prompt_ids(f, 500, 64); /* 4 blocks */
    hold(f, 1, BRIX_PREFIX_ROUTED, 4, "m");
    hold(f, 2, BRIX_PREFIX_ROUTED, 2, "m");
    for (int k = 0; k < 20; k++)
        assert_int_equal(route(f, "prefix-cache"), 1);
    const uint32_t *m = brix_route_match(&f->ctx);
    assert_non_null(m);
    for (size_t k = 0; k < f->ctx.ncand; k++)
        assert_int_equal(m[k], f->ctx.cand[k] == 1 ? 4 : f->ctx.cand[k] == 2 ? 2 : 0);
    /* the same prompt under another model name shares nothing */
    hold(f, 0, BRIX_PREFIX_ROUTED, 4, "other-model");
    assert_int_equal(route(f, "prefix-cache"), 1);
    fleet_free(f);
}

static void test_prefix_cache_commit_makes_sticky(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(3);
    set_prompt_ids(f, 7000, 160);
    brix_strategy_sel_t sel;
    char err[128];
    assert_int_equal(brix_strategy_parse("prefix-cache", &sel, err, sizeof err), 0);
    int first = route_sel(f, M_BASE, &sel, true);
    assert_true(first >= 0);
    assert_int_equal(atomic_load(&pod(f, (size_t)first)->routed_blocks), 10);
    for (int k = 0; k < 20; k++)
        assert_int_equal(route_sel(f, M_BASE, &sel, true), first);
    /* a prompt sharing only the first 5 blocks still goes there */
    set_prompt_ids(f, 7000, 80);
    assert_int_equal(route(f, "prefix-cache"), first);
    fleet_free(f);
}

static void test_prefix_cache_load_gate(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(3);
    set_prompt_ids(f, 900, 64);
    hold(f, 1, BRIX_PREFIX_ROUTED, 4, "m");
    hold(f, 2, BRIX_PREFIX_ROUTED, 2, "m");
    atomic_store(&pod(f, 1)->inflight, 6);
    /* loads 0, 6, 0: mean 2, std 2.83; k = 2 -> bound 7.66: pod 1 competes */
    f->params.prefix_std_k = 2.0;
    for (int k = 0; k < 10; k++)
        assert_int_equal(route(f, "prefix-cache"), 1);
    /* k = 1 -> bound 4.83: pod 1 is over it, the next longest match wins */
    f->params.prefix_std_k = 1.0;
    for (int k = 0; k < 10; k++)
        assert_int_equal(route(f, "prefix-cache"), 2);
    fleet_free(f);
}

static void test_prefix_cache_imbalance_least_request(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(3);
    set_prompt_ids(f, 900, 64);
    hold(f, 1, BRIX_PREFIX_ROUTED, 4, "m");
    hold(f, 2, BRIX_PREFIX_ROUTED, 2, "m");
    atomic_store(&pod(f, 1)->inflight, 20);
    atomic_store(&pod(f, 2)->inflight, 3);
    /* max - min = 20 > 16: only load counts */
    f->params.prefix_imbalance = 16;
    for (int k = 0; k < 10; k++)
        assert_int_equal(route(f, "prefix-cache"), 0);
    /* a looser threshold: mean 7.67, std 8.81, bound 25.3 -> the match wins */
    f->params.prefix_imbalance = 100;
    for (int k = 0; k < 10; k++)
        assert_int_equal(route(f, "prefix-cache"), 1);
    fleet_free(f);
}

static void test_prefix_cache_no_match_least_loaded(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(3);
    set_prompt_ids(f, 900, 64);
    atomic_store(&pod(f, 0)->inflight, 2);
    atomic_store(&pod(f, 1)->inflight, 1);
    atomic_store(&pod(f, 2)->inflight, 3);
    for (int k = 0; k < 10; k++)
        assert_int_equal(route(f, "prefix-cache"), 1);
    fleet_free(f);
}

static void test_prefix_cache_precise_sets(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(2);
    set_prompt_ids(f, 300, 64);
    /* pod 0 has live KV events: its cached set counts, not its routed one */
    brix_podset_add(&f->snap.precise, pod(f, 0)->id);
    hold(f, 0, BRIX_PREFIX_CACHED, 4, "m");
    hold(f, 1, BRIX_PREFIX_ROUTED, 2, "m");
    hold(f, 1, BRIX_PREFIX_CACHED, 4, "m"); /* not live: ignored */
    f->want_explain = true;
    assert_int_equal(route(f, "prefix-cache-precise"), 0);
    const uint32_t *m = brix_route_match(&f->ctx);
    for (size_t k = 0; k < f->ctx.ncand; k++)
        assert_int_equal(m[k], f->ctx.cand[k] == 0 ? 4 : 2);
    assert_non_null(strstr(f->explain.data, "match=4/4"));
    assert_non_null(strstr(f->explain.data, "match=2/4"));
    fleet_free(f);

    f = fleet_new(2);
    set_prompt_ids(f, 300, 64);
    brix_podset_add(&f->snap.precise, pod(f, 0)->id);
    hold(f, 0, BRIX_PREFIX_ROUTED, 4, "m"); /* routed there, but the engine evicted it */
    hold(f, 1, BRIX_PREFIX_ROUTED, 2, "m");
    for (int k = 0; k < 10; k++)
        assert_int_equal(route(f, "prefix-cache-precise"), 1);
    /* the approximate strategy only knows what it routed */
    for (int k = 0; k < 10; k++)
        assert_int_equal(route(f, "prefix-cache"), 0);
    fleet_free(f);
}

/* ---------------------------------------------------- session-affinity -- */

static void test_session_id_pins_pod(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(3);
    set_header(f, "x-session-id", "MTI3LjAuMC4xOjgwMDE="); /* base64("127.0.0.1:8001") */
    for (int k = 0; k < 20; k++) {
        assert_int_equal(route(f, "session-affinity"), 1);
        assert_non_null(f->ctx.session_out);
        assert_string_equal(f->ctx.session_out, "MTI3LjAuMC4xOjgwMDE=");
    }
    /* even when loaded */
    atomic_store(&pod(f, 1)->inflight, 50);
    assert_int_equal(route(f, "session-affinity"), 1);
    /* the named pod already tried: another one, and the header names it */
    f->exclude[0] = 1;
    f->nexclude = 1;
    int p = route(f, "session-affinity");
    assert_true(p == 0 || p == 2);
    assert_string_equal(f->ctx.session_out,
                        p == 0 ? "MTI3LjAuMC4xOjgwMDA=" : "MTI3LjAuMC4xOjgwMDI=");
    fleet_free(f);
}

static int session_pod(fleet_t *f, const char *key)
{
    set_header(f, "x-aibrix-session-key", key);
    return route(f, "session-affinity");
}

static void test_session_key_rendezvous(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(4);
    f->models[M_BASE].npods = 3; /* pods 0..2 first; pod 3 joins later */
    int before[200], per[4] = { 0 };
    char key[32];
    for (int k = 0; k < 200; k++) {
        snprintf(key, sizeof key, "user-%d", k);
        before[k] = session_pod(f, key);
        assert_true(before[k] >= 0 && before[k] < 3);
        per[before[k]]++;
        /* stable across repeats */
        for (int r = 0; r < 3; r++)
            assert_int_equal(session_pod(f, key), before[k]);
        /* the response's x-session-id names the chosen pod */
        char b64want[64];
        static const char *enc[4] = { "MTI3LjAuMC4xOjgwMDA=", "MTI3LjAuMC4xOjgwMDE=",
                                      "MTI3LjAuMC4xOjgwMDI=", "MTI3LjAuMC4xOjgwMDM=" };
        snprintf(b64want, sizeof b64want, "%s", enc[before[k]]);
        assert_string_equal(f->ctx.session_out, b64want);
    }
    for (int i = 0; i < 3; i++)
        assert_true(per[i] > 30); /* spread, not one pod */
    /* a pod joins: a key either keeps its pod or moves to the new one */
    f->models[M_BASE].npods = 4;
    int stay = 0, moved_new = 0;
    for (int k = 0; k < 200; k++) {
        snprintf(key, sizeof key, "user-%d", k);
        int p = session_pod(f, key);
        if (p == before[k])
            stay++;
        else if (p == 3)
            moved_new++;
        else
            fail_msg("key %d moved from pod %d to old pod %d", k, before[k], p);
    }
    assert_true(stay >= 100);   /* ~3/4 expected */
    assert_true(moved_new > 0); /* the new pod gets its share */
    /* the user header is the fallback key */
    clear_headers(f);
    set_header(f, "user", "user-7");
    int via_user = route(f, "session-affinity");
    clear_headers(f);
    set_header(f, "x-aibrix-session-key", "user-7");
    assert_int_equal(route(f, "session-affinity"), via_user);
    fleet_free(f);
}

static void test_session_bounded_load(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(3);
    f->params.session_load_factor = 1.25;
    int home = session_pod(f, "alice");
    assert_true(home >= 0);
    /* its pod is far above the mean: bound = 1.25 * 10/3 + 1 = 5.2 */
    atomic_store(&pod(f, (size_t)home)->inflight, 10);
    int p = session_pod(f, "alice");
    assert_true(p >= 0 && p != home);
    /* stable while the load lasts, and back home when it is gone */
    assert_int_equal(session_pod(f, "alice"), p);
    atomic_store(&pod(f, (size_t)home)->inflight, 1);
    assert_int_equal(session_pod(f, "alice"), home);
    fleet_free(f);
}

static void test_session_no_key_random(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(2);
    int c[MAXP];
    histogram(f, M_BASE, "session-affinity", 200, c);
    assert_true(c[0] > 40 && c[1] > 40);
    assert_non_null(f->ctx.session_out);
    /* an x-session-id that is not base64 or names no pod: key or random */
    set_header(f, "x-session-id", "!!!not-base64");
    histogram(f, M_BASE, "session-affinity", 200, c);
    assert_true(c[0] > 40 && c[1] > 40);
    set_header(f, "x-session-id", "MTAuMC4wLjk6MTIzNA=="); /* 10.0.0.9:1234 */
    histogram(f, M_BASE, "session-affinity", 200, c);
    assert_true(c[0] > 40 && c[1] > 40);
    fleet_free(f);
}

/* ------------------------------------------------------- lora-affinity -- */

static void test_lora_affinity_tiers(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(3);
    for (size_t i = 0; i < 3; i++)
        fresh(f, i);
    /* pod 0: slots full with other adapters; pod 1: a free slot; pod 2:
     * lora-a running, but busiest */
    snprintf(f->views[0].stats.running_loras, 256, "x");
    f->views[0].stats.max_lora = 1;
    snprintf(f->views[1].stats.running_loras, 256, "x");
    f->views[1].stats.max_lora = 2;
    snprintf(f->views[2].stats.running_loras, 256, "x,lora-a");
    f->views[2].stats.max_lora = 2;
    atomic_store(&pod(f, 2)->inflight, 30);
    atomic_store(&pod(f, 1)->inflight, 10);
    for (int k = 0; k < 10; k++)
        assert_int_equal(route_m(f, M_LORA, "lora-affinity"), 2);
    f->exclude[0] = 2;
    f->nexclude = 1;
    for (int k = 0; k < 10; k++)
        assert_int_equal(route_m(f, M_LORA, "lora-affinity"), 1);
    f->exclude[1] = 1;
    f->nexclude = 2;
    assert_int_equal(route_m(f, M_LORA, "lora-affinity"), 0);
    /* max_lora unknown (-1): treated as a free slot */
    f->nexclude = 1;
    f->views[0].stats.max_lora = -1;
    assert_int_equal(route_m(f, M_LORA, "lora-affinity"), 0); /* now less loaded, same tier */
    /* the base model: least loaded, adapters do not matter */
    f->nexclude = 0;
    atomic_store(&pod(f, 0)->inflight, 5);
    for (int k = 0; k < 10; k++)
        assert_int_equal(route_m(f, M_BASE, "lora-affinity"), 0);
    fleet_free(f);
}

static void test_lora_affinity_stale_between(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(2);
    /* pod 0 stale; pod 1 fresh with no free slot -> the unknown pod wins */
    fresh(f, 1);
    snprintf(f->views[1].stats.running_loras, 256, "x");
    f->views[1].stats.max_lora = 1;
    snprintf(f->views[0].stats.running_loras, 256, "lora-a"); /* stale: not trusted */
    assert_int_equal(route_m(f, M_LORA, "lora-affinity"), 0);
    /* pod 1 gets a free slot: it beats the unknown */
    f->views[1].stats.max_lora = 2;
    assert_int_equal(route_m(f, M_LORA, "lora-affinity"), 1);
    fleet_free(f);
}

/* ------------------------------------------------------------ weighted -- */

/* Fixed tunables, so the expected scores below follow from the documented
 * formula whatever the shipped defaults are (checked separately). */
static void weighted_params(fleet_t *f)
{
    f->params.w_prefix = 1.0;
    f->params.w_queue = 1.0;
    f->params.w_decode = 1.0;
    f->params.decode_tokens = 64.0;
    f->params.w_kv = 1.0;
    f->params.kv_high = 0.9;
    f->params.kv_tokens = 8192.0;
    f->params.w_lora = 1.0;
    f->params.lora_tokens = 2048.0;
}

static void test_weighted_uncached_tokens(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(2);
    weighted_params(f);
    set_prompt_ids(f, 40, 200); /* 12 full blocks + 8 tokens */
    hold(f, 0, BRIX_PREFIX_ROUTED, 12, "m");
    assert_int_equal(route(f, "weighted"), 0);
    assert_true(fabs(score_of(f, 0) - 8.0) < 1e-9);
    assert_true(fabs(score_of(f, 1) - 200.0) < 1e-9);
    /* the default strategy is weighted: parse "" is not valid, but the name is */
    assert_non_null(brix_strategy_find("weighted"));
    fleet_free(f);
}

/* With a shared KV store, blocks of a prompt routed anywhere count on every
 * pod as (1 - kv_store_cost) of a local hit: between a miss and a hit. */
static void test_weighted_store_between_hit_and_miss(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(3);
    weighted_params(f);
    f->params.kv_store_cost = 0.25;
    set_prompt_ids(f, 40, 200); /* 12 full blocks + 8 tokens */
    /* without a store nothing changes: the routing history is per pod */
    brix_strategy_sel_t sel;
    char err[128];
    assert_int_equal(brix_strategy_parse("weighted", &sel, err, sizeof err), 0);
    int first = route_sel(f, M_BASE, &sel, true);
    assert_true(first >= 0);
    size_t other = first == 0 ? 1 : 0;
    assert_int_equal(route(f, "weighted"), first);
    assert_int_equal(brix_route_store_match(&f->ctx), 0);
    assert_true(fabs(score_of(f, other) - 200.0) < 1e-9);
    /* the fleet shares a store: the next commit also marks the store */
    f->params.kv_store_all = true;
    assert_int_equal(route_sel(f, M_BASE, &sel, true), first);
    assert_int_equal(route(f, "weighted"), first);
    assert_int_equal(brix_route_store_match(&f->ctx), 12);
    assert_true(fabs(score_of(f, (size_t)first) - 8.0) < 1e-9);
    /* 192 store tokens at 0.25 of a miss each, + 8 uncached */
    assert_true(fabs(score_of(f, other) - (8.0 + 0.25 * 192.0)) < 1e-9);
    /* so a queue on the hot pod worth more than the load sends it elsewhere,
     * where without the store it would stay (192 tokens of recompute) */
    atomic_store(&pod(f, (size_t)first)->pending_prefill, 100);
    int p = route(f, "weighted");
    assert_true(p != first);
    f->params.kv_store_all = false;
    assert_int_equal(route(f, "weighted"), first);
    /* a cost of 1 makes the store worthless, 0 as good as a local hit */
    f->params.kv_store_all = true;
    f->params.kv_store_cost = 1.0;
    assert_int_equal(route(f, "weighted"), first);
    f->params.kv_store_cost = 0.0;
    route(f, "weighted");
    assert_true(fabs(score_of(f, other) - 8.0) < 1e-9);
    fleet_free(f);
}

/* prefix-cache: the store's blocks lift every pod, local hits still win. */
static void test_prefix_cache_store_blocks(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(3);
    f->params.kv_store_all = true;
    set_prompt_ids(f, 900, 64); /* 4 blocks */
    hold(f, 1, BRIX_PREFIX_ROUTED, 2, "m");
    uint64_t hs[8];
    size_t n = prompt_hashes(f, "m", hs, 8);
    assert_int_equal(n, 4);
    brix_prefix_index_add(f->ix, BRIX_PREFIX_ROUTED, hs, 4, BRIX_PREFIX_STORE_POD);
    for (int k = 0; k < 10; k++)
        assert_int_equal(route(f, "prefix-cache"), 1);
    const uint32_t *m = brix_route_match_approx(&f->ctx);
    for (size_t k = 0; k < f->ctx.ncand; k++) {
        double h = brix_route_hit_blocks(&f->ctx, m, k);
        /* pod 1: 2 local + 2 x 0.75 from the store; the others 4 x 0.75 */
        assert_true(fabs(h - (f->ctx.cand[k] == 1 ? 3.5 : 3.0)) < 1e-9);
    }
    /* pod 1 busier than the bound: the store makes the others nearly as good */
    atomic_store(&pod(f, 1)->inflight, 6);
    f->params.prefix_std_k = 0.5;
    int p = route(f, "prefix-cache");
    assert_true(p == 0 || p == 2);
    assert_string_equal(f->ctx.reason,
                        "prefix in the shared KV store: least loaded within the bound");
    fleet_free(f);
}

static void test_weighted_queue_beats_hot_prefix(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(2);
    weighted_params(f);
    set_prompt_ids(f, 40, 200);
    hold(f, 0, BRIX_PREFIX_ROUTED, 12, "m");
    /* the pod with the prefix has 5000 prompt tokens queued */
    atomic_store(&pod(f, 0)->pending_prefill, 5000);
    for (int k = 0; k < 10; k++)
        assert_int_equal(route(f, "weighted"), 1);
    assert_true(fabs(score_of(f, 0) - 5008.0) < 1e-9);
    /* a small queue does not outweigh the prefix */
    atomic_store(&pod(f, 0)->pending_prefill, 100);
    assert_int_equal(route(f, "weighted"), 0);
    /* a negative transient (answered before counted) counts as zero */
    atomic_store(&pod(f, 0)->pending_prefill, -50);
    assert_int_equal(route(f, "weighted"), 0);
    assert_true(fabs(score_of(f, 0) - 8.0) < 1e-9);
    fleet_free(f);
}

static void test_weighted_decode_term(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(2);
    weighted_params(f);
    set_prompt_ids(f, 40, 200);
    hold(f, 0, BRIX_PREFIX_ROUTED, 12, "m");
    fresh(f, 0);
    fresh(f, 1);
    f->views[0].stats.running = 10; /* 10 * 64 = 640 > 192 saved */
    assert_int_equal(route(f, "weighted"), 1);
    assert_true(fabs(score_of(f, 0) - (8.0 + 640.0)) < 1e-9);
    f->views[0].stats.running = 2; /* 128 < 192 */
    assert_int_equal(route(f, "weighted"), 0);
    /* stale metrics: the gateway's in-flight count stands in */
    f->views[0].metrics_fresh = false;
    f->views[0].stats.running = 10;
    atomic_store(&pod(f, 0)->inflight, 1);
    assert_int_equal(route(f, "weighted"), 0);
    assert_true(fabs(score_of(f, 0) - (8.0 + 64.0)) < 1e-9);
    atomic_store(&pod(f, 0)->inflight, 4);
    assert_int_equal(route(f, "weighted"), 1);
    fleet_free(f);
}

static void test_weighted_kv_penalty(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(2);
    weighted_params(f);
    set_prompt_ids(f, 40, 200);
    hold(f, 0, BRIX_PREFIX_ROUTED, 12, "m");
    fresh(f, 0);
    fresh(f, 1);
    f->views[0].stats.kv_usage = 0.85; /* below kv_high 0.9: no penalty */
    f->views[1].stats.kv_usage = 0.1;
    assert_int_equal(route(f, "weighted"), 0);
    assert_true(fabs(score_of(f, 0) - 8.0) < 1e-9);
    f->views[0].stats.kv_usage = 0.95; /* half way to full: 4096 */
    assert_int_equal(route(f, "weighted"), 1);
    assert_true(fabs(score_of(f, 0) - (8.0 + 4096.0)) < 1e-6);
    fleet_free(f);
}

static void test_weighted_lora_penalty(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(3);
    weighted_params(f);
    set_prompt_ids(f, 40, 200);
    for (size_t i = 0; i < 3; i++)
        fresh(f, i);
    snprintf(f->views[0].stats.running_loras, 256, "lora-a");
    f->views[0].stats.max_lora = 2;
    f->views[1].stats.max_lora = 2; /* free slot */
    snprintf(f->views[2].stats.running_loras, 256, "x,y");
    f->views[2].stats.max_lora = 2; /* full */
    assert_int_equal(route_m(f, M_LORA, "weighted"), 0);
    assert_true(fabs(score_of(f, 0) - 200.0) < 1e-9);
    assert_true(fabs(score_of(f, 1) - (200.0 + 2048.0)) < 1e-9);
    assert_true(fabs(score_of(f, 2) - (200.0 + 4096.0)) < 1e-9);
    /* base-model requests pay no adapter cost */
    assert_int_equal(route(f, "weighted") >= 0, 1);
    for (size_t i = 0; i < 3; i++)
        assert_true(fabs(score_of(f, i) - 200.0) < 1e-9);
    fleet_free(f);
}

/* With the shipped defaults: a hot prefix pod with a large prefill queue
 * loses to a cold idle pod; with a short queue it keeps the request. */
static void test_weighted_defaults_spill_hot_prefix(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(2);
    const brix_route_params_t *P = &f->params;
    assert_true(P->w_prefix > 0 && P->w_queue > 0 && P->w_decode >= 0 && P->block_size == 16);
    set_prompt_ids(f, 40, 1600); /* 100 blocks */
    hold(f, 0, BRIX_PREFIX_ROUTED, 100, "m");
    /* saving: the whole prompt; a queue worth twice that tips it */
    double saving = P->w_prefix * 1600;
    atomic_store(&pod(f, 0)->pending_prefill, (long long)(2 * saving / P->w_queue) + 1);
    for (int k = 0; k < 10; k++)
        assert_int_equal(route(f, "weighted"), 1);
    atomic_store(&pod(f, 0)->pending_prefill, (long long)(0.5 * saving / P->w_queue));
    for (int k = 0; k < 10; k++)
        assert_int_equal(route(f, "weighted"), 0);
    assert_true(fabs(score_of(f, 1) - saving) < 1e-6);
    fleet_free(f);
}

static void test_weighted_uses_precise_match(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(2);
    weighted_params(f);
    set_prompt_ids(f, 40, 200);
    brix_podset_add(&f->snap.precise, pod(f, 0)->id);
    brix_podset_add(&f->snap.precise, pod(f, 1)->id);
    hold(f, 0, BRIX_PREFIX_ROUTED, 12, "m"); /* routed there but since evicted */
    hold(f, 1, BRIX_PREFIX_CACHED, 10, "m");
    assert_int_equal(route(f, "weighted"), 1);
    assert_true(fabs(score_of(f, 1) - 40.0) < 1e-9);
    assert_true(fabs(score_of(f, 0) - 200.0) < 1e-9);
    fleet_free(f);
}

/* --------------------------------------------------------------- peers -- */

static void test_sglang_cache_aware(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(2);
    set_prompt_ids(f, 40, 192); /* 12 blocks */
    hold(f, 0, BRIX_PREFIX_ROUTED, 12, "m");
    /* imbalanced: 100 - 10 > 64 and 100 > 1.5 * 10 -> least loaded */
    atomic_store(&pod(f, 0)->inflight, 100);
    atomic_store(&pod(f, 1)->inflight, 10);
    assert_int_equal(route(f, "sglang-cache-aware"), 1);
    /* 50 vs 10: balanced -> the match (100% > 30%) */
    atomic_store(&pod(f, 0)->inflight, 50);
    assert_int_equal(route(f, "sglang-cache-aware"), 0);
    /* 100 vs 70: max > 1.5 min is false and the difference is 30: balanced */
    atomic_store(&pod(f, 0)->inflight, 100);
    atomic_store(&pod(f, 1)->inflight, 70);
    assert_int_equal(route(f, "sglang-cache-aware"), 0);
    fleet_free(f);

    /* match at or below 30%: the smallest routed history wins */
    f = fleet_new(2);
    set_prompt_ids(f, 40, 192);
    hold(f, 0, BRIX_PREFIX_ROUTED, 3, "m"); /* 25% */
    atomic_store(&pod(f, 0)->routed_blocks, 1000);
    atomic_store(&pod(f, 1)->routed_blocks, 10);
    assert_int_equal(route(f, "sglang-cache-aware"), 1);
    fleet_free(f);
    f = fleet_new(2);
    set_prompt_ids(f, 40, 192);
    hold(f, 0, BRIX_PREFIX_ROUTED, 4, "m"); /* 33% */
    atomic_store(&pod(f, 0)->routed_blocks, 1000);
    atomic_store(&pod(f, 1)->routed_blocks, 10);
    assert_int_equal(route(f, "sglang-cache-aware"), 0);
    /* it only knows what it routed: a cached-only block set does not count */
    brix_podset_add(&f->snap.precise, pod(f, 1)->id);
    hold(f, 1, BRIX_PREFIX_CACHED, 12, "m");
    assert_int_equal(route(f, "sglang-cache-aware"), 0);
    fleet_free(f);
}

static void test_gie_default(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(2);
    set_prompt_ids(f, 40, 192);
    hold(f, 0, BRIX_PREFIX_ROUTED, 12, "m");
    fresh(f, 0);
    fresh(f, 1);
    /* prefix 3 + KV 2*(1-0.5) + queue 2 = 6 beats KV 2*0.9 + queue 2 = 3.8 */
    f->views[0].stats.kv_usage = 0.5;
    f->views[1].stats.kv_usage = 0.1;
    assert_int_equal(route(f, "gie-default"), 0);
    assert_true(fabs(score_of(f, 0) - -6.0) < 1e-9);
    assert_true(fabs(score_of(f, 1) - -3.8) < 1e-9);
    /* pod 0 saturated (queue > 5): filtered despite its match */
    f->views[0].stats.waiting = 6;
    assert_int_equal(route(f, "gie-default"), 1);
    /* KV > 0.8 too */
    f->views[0].stats.waiting = 0;
    f->views[0].stats.kv_usage = 0.85;
    assert_int_equal(route(f, "gie-default"), 1);
    /* all saturated: nobody is filtered, the scores decide */
    f->views[0].stats.kv_usage = 0.5;
    f->views[0].stats.waiting = 6;
    f->views[1].stats.waiting = 8;
    assert_int_equal(route(f, "gie-default"), 0);
    /* queue depth scorer: without prefix, the shorter queue wins */
    fleet_free(f);
    f = fleet_new(2);
    set_prompt_ids(f, 40, 192);
    fresh(f, 0);
    fresh(f, 1);
    f->views[0].stats.waiting = 4;
    f->views[1].stats.waiting = 1;
    assert_int_equal(route(f, "gie-default"), 1);
    fleet_free(f);
}

/* ---------------------------------------------------------------- mixes -- */

static void test_strategy_parse(void **state)
{
    (void)state;
    brix_strategy_sel_t s;
    char err[512];
    assert_int_equal(brix_strategy_parse("prefix-cache:2,least-request:1", &s, err, sizeof err), 0);
    assert_int_equal(s.n, 2);
    assert_ptr_equal(s.s[0], &brix_strategy_prefix_cache);
    assert_ptr_equal(s.s[1], &brix_strategy_least_request);
    assert_true(s.w[0] == 2 && s.w[1] == 1);
    assert_string_equal(s.name, "prefix-cache:2,least-request");
    /* spaces tolerated, default weight 1 */
    assert_int_equal(brix_strategy_parse("least-kv-cache , least-latency:3", &s, err, sizeof err),
                     0);
    assert_int_equal(s.n, 2);
    assert_string_equal(s.name, "least-kv-cache,least-latency:3");
    /* weight 0 skips */
    assert_int_equal(brix_strategy_parse("random:0,least-request", &s, err, sizeof err), 0);
    assert_int_equal(s.n, 1);
    assert_ptr_equal(s.s[0], &brix_strategy_least_request);
    assert_string_equal(s.name, "least-request");
    /* every table entry parses under its own name */
    size_t n;
    const brix_strategy_t *const *all = brix_strategies(&n);
    assert_true(n >= 17);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(brix_strategy_parse(all[i]->name, &s, err, sizeof err), 0);
        assert_string_equal(s.name, all[i]->name);
        assert_non_null(strstr(brix_strategy_names(), all[i]->name));
    }
    /* AIBrix's names are all there */
    static const char *aibrix[] = {
        "random",          "least-request",   "throughput",        "least-kv-cache",
        "least-gpu-cache", "least-busy-time", "least-utilization", "least-latency",
        "power-of-two",    "prefix-cache",    "session-affinity"
    };
    for (size_t i = 0; i < sizeof aibrix / sizeof *aibrix; i++)
        assert_non_null(brix_strategy_find(aibrix[i]));
    /* rejected */
    static const char *bad[] = { "nope:1",
                                 "nope",
                                 "",
                                 "random:0",
                                 "least-request:x",
                                 "least-request:-1",
                                 "least-request:1000001",
                                 "least-request:1.5",
                                 "least-request:",
                                 "least-request,,random",
                                 ":2",
                                 "prefix-cache:2,nope:1",
                                 "random,random,random,random,random,random,random,random,random" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = '\0';
        if (brix_strategy_parse(bad[i], &s, err, sizeof err) == 0)
            fail_msg("'%s' accepted", bad[i]);
        assert_true(err[0] != '\0');
    }
    assert_int_equal(brix_strategy_parse("nope:1", &s, err, sizeof err), -1);
    assert_non_null(strstr(err, "nope"));
    /* the largest weight is fine */
    assert_int_equal(brix_strategy_parse("least-request:1000000", &s, err, sizeof err), 0);
}

static void test_mix_weights(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(2);
    fresh(f, 0);
    fresh(f, 1);
    /* pod 0: low KV, big batch; pod 1: high KV, small batch */
    f->views[0].stats.kv_usage = 0.1;
    f->views[0].stats.running = 8;
    f->views[1].stats.kv_usage = 0.9;
    f->views[1].stats.running = 2;
    for (int k = 0; k < 10; k++) {
        assert_int_equal(route(f, "least-kv-cache:1,least-utilization:3"), 1);
        assert_int_equal(route(f, "least-kv-cache:3,least-utilization:1"), 0);
    }
    /* normalised to 0..1 per strategy, then weighted */
    route(f, "least-kv-cache:3,least-utilization:1");
    assert_true(fabs(score_of(f, 0) - 1.0) < 1e-9);
    assert_true(fabs(score_of(f, 1) - 3.0) < 1e-9);
    /* weight 0 drops the strategy */
    for (int k = 0; k < 10; k++)
        assert_int_equal(route(f, "least-kv-cache:0,least-utilization:1"), 1);
    fleet_free(f);
}

static void test_mix_prefix_and_load(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(3);
    set_prompt_ids(f, 40, 64);
    hold(f, 1, BRIX_PREFIX_ROUTED, 4, "m");
    hold(f, 2, BRIX_PREFIX_ROUTED, 4, "m");
    atomic_store(&pod(f, 1)->inflight, 4);
    atomic_store(&pod(f, 2)->inflight, 2);
    /* prefix 2: pods 1, 2 score 0, pod 0 scores 2; load 1: 0, 1, 0.5 */
    f->want_explain = true;
    for (int k = 0; k < 10; k++)
        assert_int_equal(route(f, "prefix-cache:2,least-request:1"), 2);
    assert_non_null(strstr(f->explain.data, "strategy=prefix-cache:2,least-request;"));
    assert_non_null(strstr(f->explain.data, "chosen=127.0.0.1:8002;"));
    /* with the prefix weight at 0 the idle pod wins */
    for (int k = 0; k < 10; k++)
        assert_int_equal(route(f, "prefix-cache:0,least-request:1"), 0);
    fleet_free(f);
}

/* ------------------------------------------------- ties, filters, errors -- */

static void test_ties_at_random(void **state)
{
    (void)state;
    /* {strategy, whether pods 0 and 1 both hold the whole prompt} */
    static const struct {
        const char *name;
        bool held;
    } tied[] = { { "least-request", false },
                 { "weighted", false },
                 { "weighted", true },
                 { "least-kv-cache", false },
                 { "lora-affinity", false },
                 { "gie-default", false },
                 { "least-latency", false },
                 { "prefix-cache", false },
                 { "prefix-cache", true },
                 { "prefix-cache-precise", false },
                 { "prefix-cache:1,least-request", false } };
    char bad[1024] = "";
    size_t pos = 0;
    for (size_t s = 0; s < sizeof tied / sizeof *tied; s++) {
        fleet_t *f = fleet_new(3);
        atomic_store(&pod(f, 2)->inflight, 7); /* pod 2 is worse for all of them */
        f->views[2].metrics_fresh = true;
        f->views[2].stats.kv_usage = 0.95;
        f->views[2].stats.waiting = 7;
        f->views[2].stats.queue_s = 5;
        f->views[0].metrics_fresh = f->views[1].metrics_fresh = true;
        set_prompt_ids(f, 40, 64);
        if (tied[s].held) {
            hold(f, 0, BRIX_PREFIX_ROUTED, 4, "m");
            hold(f, 1, BRIX_PREFIX_ROUTED, 4, "m");
        }
        int c[MAXP];
        histogram(f, M_BASE, tied[s].name, 300, c);
        fleet_free(f);
        if (c[0] < 75 || c[1] < 75 || c[2] != 0)
            pos += (size_t)snprintf(bad + pos, sizeof bad - pos, "\n  %s%s: pods chosen %d %d %d",
                                    tied[s].name, tied[s].held ? " (both hold the prompt)" : "",
                                    c[0], c[1], c[2]);
    }
    if (pos)
        fail_msg("ties not broken at random (300 draws, pods 0 and 1 tied):%s", bad);
}

static void test_unhealthy_and_ejected(void **state)
{
    (void)state;
    static const char *all[] = { "random",
                                 "round-robin",
                                 "least-request",
                                 "power-of-two",
                                 "throughput",
                                 "least-kv-cache",
                                 "least-latency",
                                 "prefix-cache",
                                 "prefix-cache-precise",
                                 "session-affinity",
                                 "lora-affinity",
                                 "weighted",
                                 "sglang-cache-aware",
                                 "gie-default",
                                 "prefix-cache:2,least-request" };
    fleet_t *f = fleet_new(3);
    set_prompt_ids(f, 40, 64);
    set_header(f, "x-session-id", "MTI3LjAuMC4xOjgwMDE="); /* pod 1 */
    hold(f, 1, BRIX_PREFIX_ROUTED, 4, "m");
    /* pod 1 unhealthy, pod 0 ejected (breaker open): only pod 2 */
    f->views[1].healthy = false;
    atomic_store(&pod(f, 0)->breaker, BRIX_BREAKER_OPEN);
    atomic_store(&pod(f, 0)->ejected_until_ns, NOW + 1000000000ull);
    for (size_t s = 0; s < sizeof all / sizeof *all; s++)
        for (int k = 0; k < 5; k++)
            if (route(f, all[s]) != 2)
                fail_msg("%s: routed to an unhealthy or ejected pod", all[s]);
    /* everything out -> NO_POD */
    f->views[2].healthy = false;
    for (size_t s = 0; s < sizeof all / sizeof *all; s++)
        if (route(f, all[s]) != -1)
            fail_msg("%s: routed with no healthy pod", all[s]);
    /* ejection over: half-open, exactly one probe */
    atomic_store(&pod(f, 0)->ejected_until_ns, NOW - 1);
    assert_int_equal(route(f, "least-request"), 0);
    assert_true(f->probe);
    assert_int_equal(route(f, "least-request"), -1); /* the probe is in flight */
    f->views[2].healthy = true;
    assert_int_equal(route(f, "least-request"), 2);
    assert_false(f->probe);
    fleet_free(f);
}

static void test_excluded_pods_skipped(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(3);
    set_prompt_ids(f, 40, 64);
    hold(f, 0, BRIX_PREFIX_ROUTED, 4, "m");
    f->exclude[0] = 0;
    f->nexclude = 1;
    static const char *all[] = { "random",           "round-robin",       "least-request",
                                 "prefix-cache",     "weighted",          "power-of-two",
                                 "session-affinity", "sglang-cache-aware" };
    for (size_t s = 0; s < sizeof all / sizeof *all; s++) {
        for (int k = 0; k < 30; k++) {
            int p = route(f, all[s]);
            if (p != 1 && p != 2)
                fail_msg("%s: chose excluded pod %d", all[s], p);
        }
    }
    f->exclude[1] = 1;
    f->exclude[2] = 2;
    f->nexclude = 3;
    assert_int_equal(route(f, "random"), -1);
    fleet_free(f);
}

static void test_single_candidate_shortcut(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(2);
    set_prompt_ids(f, 41, 64);
    f->exclude[0] = 0;
    f->nexclude = 1;
    /* one candidate, nobody asking why: chosen without scoring or hashing */
    static const char *all[] = { "random", "least-request", "prefix-cache", "weighted",
                                 "prefix-cache:2,least-request:1" };
    for (size_t s = 0; s < sizeof all / sizeof *all; s++) {
        assert_int_equal(route(f, all[s]), 1);
        assert_string_equal(f->ctx.reason, "the only candidate");
        assert_false(f->ctx.prompt_done);
    }
    /* session-affinity still runs: it must name the pod for the client */
    assert_int_equal(route(f, "session-affinity"), 1);
    assert_non_null(f->ctx.session_out);
    /* with an explanation asked for, the candidate is scored and explained */
    f->want_explain = true;
    assert_int_equal(route(f, "weighted"), 1);
    assert_non_null(strstr(f->explain.data, "chosen=127.0.0.1:8001"));
    fleet_free(f);
}

static void test_vtc_basic(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(4);
    char body[6000];
    int n = snprintf(body, sizeof body, "{\"model\":\"m\",\"prompt\":\"");
    for (int i = 0; i < 4000; i++)
        body[n++] = 'a' + (char)(i % 26);
    snprintf(body + n, sizeof body - (size_t)n, "\"}");
    set_body(f, body); /* ~1000 input tokens: 1000 + 2 x 1500 charged per request */
    set_header(f, "user", "vtc-heavy");
    assert_int_equal(route(f, "vtc-basic"), 0); /* no tokens yet: the first pod */
    int last = 0;
    for (int k = 0; k < 6; k++)
        last = route(f, "vtc-basic");
    assert_int_equal(last, 3); /* the heaviest user is pushed to the last pod */
    clear_headers(f);
    set_body(f, "{\"model\":\"m\",\"prompt\":\"hi\"}");
    set_header(f, "user", "vtc-light");
    assert_int_equal(route(f, "vtc-basic"), 0);
    clear_headers(f);
    int counts[MAXP];
    histogram(f, M_BASE, "vtc-basic", 200, counts); /* no user: random */
    for (int i = 0; i < 4; i++)
        assert_true(counts[i] > 20);
    fleet_free(f);
}

static void test_adapter_nowhere_no_pod(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(2);
    set_prompt_ids(f, 40, 64);
    size_t n;
    const brix_strategy_t *const *all = brix_strategies(&n);
    for (size_t i = 0; i < n; i++) {
        if (route_m(f, M_GHOST, all[i]->name) != -1)
            fail_msg("%s: routed a model no pod serves", all[i]->name);
    }
    assert_int_equal(route_m(f, M_GHOST, "prefix-cache:2,least-request"), -1);
    fleet_free(f);
}

static void test_explanation(void **state)
{
    (void)state;
    fleet_t *f = fleet_new(2);
    set_prompt_ids(f, 40, 64);
    hold(f, 1, BRIX_PREFIX_ROUTED, 4, "m");
    f->want_explain = true;
    assert_int_equal(route(f, "prefix-cache"), 1);
    const char *e = f->explain.data;
    assert_non_null(e);
    assert_non_null(strstr(e, "strategy=prefix-cache;"));
    assert_non_null(strstr(e, "chosen=127.0.0.1:8001;"));
    assert_non_null(strstr(e, "reason="));
    assert_non_null(strstr(e, "127.0.0.1:8000(score="));
    assert_non_null(strstr(e, "127.0.0.1:8001(score="));
    assert_non_null(strstr(e, "match=4/4"));
    assert_non_null(strstr(e, "match=0/4"));
    /* without the flag, nothing is written */
    f->want_explain = false;
    route(f, "prefix-cache");
    assert_true(f->explain.len == 0);
    fleet_free(f);
}

/* ------------------------------------------------- prompt token counts -- */

static size_t engine_chat_tokens(const char *const *roles, const char *const *contents, size_t n)
{
    brix_buf_t text = BRIX_BUF_INIT;
    assert_int_equal(brix_chat_render_begin(&text), 0);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(
            brix_chat_render_message(&text, roles[i], contents[i], strlen(contents[i])), 0);
    assert_int_equal(brix_chat_render_end(&text, true), 0);
    uint32_t *ids = NULL;
    size_t cnt = 0, cap = 0;
    assert_int_equal(brix_tokenize(text.data, text.len, &ids, &cnt, &cap), 0);
    brix_free(ids);
    brix_buf_free(&text);
    return cnt;
}

static void check_hash_chain(const brix_prompt_t *pr, const char *model, const uint32_t *ids,
                             size_t n)
{
    uint64_t h = brix_prompt_root(model);
    assert_int_equal(pr->nhashes, n / 16);
    for (size_t b = 0; b < n / 16; b++) {
        h = brix_prompt_block_hash(h, ids + b * 16, 16);
        assert_true(pr->hashes[b] == h);
    }
}

static void test_prompt_tokens_match_engine(void **state)
{
    (void)state;
    brix_arena_t a;
    brix_arena_init(&a, 4096);
    brix_prompt_t pr;
    brix_req_fields_t fl;

    /* chat: string content, content parts (joined), escapes */
    const char *chat =
        "{\"model\":\"m\",\"messages\":["
        "{\"role\":\"system\",\"content\":\"You are terse. Answer in 3 words.\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hello \"},"
        "{\"type\":\"text\",\"text\":\"world, 12345!\\nNew line \\u00e9t\\u00e9\"}]},"
        "{\"role\":\"assistant\",\"content\":\"Sure.\"},"
        "{\"role\":\"user\",\"content\":\"Again <|eot_id|> please\"}]}";
    const char *roles[] = { "system", "user", "assistant", "user" };
    const char *contents[] = { "You are terse. Answer in 3 words.",
                               "Hello world, 12345!\nNew line \xc3\xa9t\xc3\xa9", "Sure.",
                               "Again <|eot_id|> please" };
    parse_fields(chat, "m", &fl);
    assert_int_equal(brix_prompt_hash(&fl, "m", 16, 2048, &a, &pr), 0);
    assert_true(pr.known);
    assert_int_equal(pr.ntokens, engine_chat_tokens(roles, contents, 4));
    {
        brix_buf_t text = BRIX_BUF_INIT;
        brix_chat_render_begin(&text);
        for (size_t i = 0; i < 4; i++)
            brix_chat_render_message(&text, roles[i], contents[i], strlen(contents[i]));
        brix_chat_render_end(&text, true);
        uint32_t *ids = NULL;
        size_t cnt = 0, cap = 0;
        assert_int_equal(brix_tokenize(text.data, text.len, &ids, &cnt, &cap), 0);
        check_hash_chain(&pr, "m", ids, cnt);
        brix_free(ids);
        brix_buf_free(&text);
    }

    /* a long chat (many blocks) */
    brix_buf_t body = BRIX_BUF_INIT, content = BRIX_BUF_INIT;
    for (int i = 0; i < 300; i++)
        brix_buf_printf(&content, "Sentence number %d says something about topic %d. ", i, i % 7);
    brix_buf_printf(&body,
                    "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}",
                    content.data);
    parse_fields(body.data, "m", &fl);
    brix_arena_reset(&a);
    assert_int_equal(brix_prompt_hash(&fl, "m", 16, 2048, &a, &pr), 0);
    const char *r1[] = { "user" };
    const char *c1[] = { content.data };
    size_t want = engine_chat_tokens(r1, c1, 1);
    assert_true(want > 1000);
    assert_int_equal(pr.ntokens, want);
    assert_int_equal(pr.nhashes, want / 16);
    /* max_blocks caps the hashes, not the count */
    brix_arena_reset(&a);
    assert_int_equal(brix_prompt_hash(&fl, "m", 16, 10, &a, &pr), 0);
    assert_int_equal(pr.nhashes, 10);
    assert_int_equal(pr.ntokens, want);
    brix_buf_free(&body);

    /* completions: BOS + the text's tokens */
    const char *cmpl = "{\"model\":\"m\",\"prompt\":\"The quick brown fox\\njumps over 1234567 "
                       "lazy dogs.\\t\\tOK?\"}";
    const char *ctext = "The quick brown fox\njumps over 1234567 lazy dogs.\t\tOK?";
    parse_fields(cmpl, "m", &fl);
    brix_arena_reset(&a);
    assert_int_equal(brix_prompt_hash(&fl, "m", 16, 2048, &a, &pr), 0);
    assert_true(pr.known);
    assert_int_equal(pr.ntokens, 1 + brix_tok_count(ctext, strlen(ctext)));
    /* a long completions prompt: hashes chain over BOS + tokens */
    brix_buf_reset(&body);
    brix_buf_printf(&body, "{\"model\":\"m\",\"prompt\":\"%s\"}", content.data);
    parse_fields(body.data, "m", &fl);
    brix_arena_reset(&a);
    assert_int_equal(brix_prompt_hash(&fl, "m", 16, 2048, &a, &pr), 0);
    {
        uint32_t *ids = NULL;
        size_t cnt = 0, cap = 0;
        uint32_t bos = BRIX_TOK_BOS;
        ids = brix_malloc(sizeof *ids);
        ids[0] = bos;
        cnt = 1;
        cap = 1;
        assert_int_equal(brix_tokenize(content.data, content.len, &ids, &cnt, &cap), 0);
        assert_int_equal(pr.ntokens, cnt);
        check_hash_chain(&pr, "m", ids, cnt);
        brix_free(ids);
    }
    /* token ids: as given, no BOS */
    parse_fields("{\"model\":\"m\",\"prompt\":[5,6,7,8]}", "m", &fl);
    brix_arena_reset(&a);
    assert_int_equal(brix_prompt_hash(&fl, "m", 16, 2048, &a, &pr), 0);
    assert_int_equal(pr.ntokens, 4);
    /* the model name roots the chain: adapters never share entries */
    brix_buf_reset(&body);
    brix_buf_printf(&body, "{\"model\":\"m\",\"prompt\":\"%s\"}", content.data);
    parse_fields(body.data, "m", &fl);
    brix_arena_reset(&a);
    assert_int_equal(brix_prompt_hash(&fl, "m", 16, 2048, &a, &pr), 0);
    uint64_t h0 = pr.hashes[0];
    brix_arena_reset(&a);
    assert_int_equal(brix_prompt_hash(&fl, "lora-a", 16, 2048, &a, &pr), 0);
    assert_true(pr.hashes[0] != h0);
    brix_buf_free(&body);
    brix_buf_free(&content);
    brix_arena_free(&a);
}

int main(void)
{
    brix_alloc_init();
    const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, leak_setup, leak_teardown)
        T(test_random_uses_every_pod),
        T(test_round_robin_alternates),
        T(test_least_request_fresh_and_stale),
        T(test_power_of_two),
        T(test_metric_strategies_prefer_better_metric),
        T(test_metric_strategies_stale_loses),
        T(test_least_latency_uses_prompt_length),
        T(test_prefix_cache_longest_match),
        T(test_prefix_cache_commit_makes_sticky),
        T(test_prefix_cache_load_gate),
        T(test_prefix_cache_imbalance_least_request),
        T(test_prefix_cache_no_match_least_loaded),
        T(test_prefix_cache_precise_sets),
        T(test_session_id_pins_pod),
        T(test_session_key_rendezvous),
        T(test_session_bounded_load),
        T(test_session_no_key_random),
        T(test_lora_affinity_tiers),
        T(test_lora_affinity_stale_between),
        T(test_weighted_uncached_tokens),
        T(test_weighted_store_between_hit_and_miss),
        T(test_prefix_cache_store_blocks),
        T(test_weighted_queue_beats_hot_prefix),
        T(test_weighted_decode_term),
        T(test_weighted_kv_penalty),
        T(test_weighted_lora_penalty),
        T(test_weighted_defaults_spill_hot_prefix),
        T(test_weighted_uses_precise_match),
        T(test_sglang_cache_aware),
        T(test_gie_default),
        T(test_strategy_parse),
        T(test_mix_weights),
        T(test_mix_prefix_and_load),
        T(test_ties_at_random),
        T(test_unhealthy_and_ejected),
        T(test_excluded_pods_skipped),
        T(test_single_candidate_shortcut),
        T(test_vtc_basic),
        T(test_adapter_nowhere_no_pod),
        T(test_explanation),
        T(test_prompt_tokens_match_engine),
#undef T
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
