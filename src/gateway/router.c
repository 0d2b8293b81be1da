/*
 * The router's generic part: candidate filtering, breaker probes, the
 * default pick, weighted mixes, explanations, and the lazily computed
 * request data strategies share (prompt hashes, prefix matches, loads).
 * The strategies themselves live in strategies/.
 */
#include "gateway/router.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const brix_strategy_t *const strategies[] = {
    &brix_strategy_weighted,
    &brix_strategy_random,
    &brix_strategy_round_robin,
    &brix_strategy_least_request,
    &brix_strategy_power_of_two,
    &brix_strategy_throughput,
    &brix_strategy_least_kv_cache,
    &brix_strategy_least_gpu_cache,
    &brix_strategy_least_busy_time,
    &brix_strategy_least_utilization,
    &brix_strategy_least_latency,
    &brix_strategy_prefix_cache,
    &brix_strategy_prefix_cache_precise,
    &brix_strategy_session_affinity,
    &brix_strategy_lora_affinity,
    &brix_strategy_sglang_cache_aware,
    &brix_strategy_gie_default,
    &brix_strategy_vtc_basic,
};

const brix_strategy_t *const *brix_strategies(size_t *n)
{
    *n = sizeof strategies / sizeof *strategies;
    return strategies;
}

void brix_route_params_default(brix_route_params_t *p)
{
    p->block_size = 16;
    p->max_blocks = 2048;
    p->prefix_std_k = 2.0;      /* AIBrix's shipped manifest */
    p->prefix_imbalance = 16.0; /* AIBrix's shipped manifest */
    /* a cache miss adds its prompt to the fleet's work, queued tokens only
     * wait: 3x (the best of a sweep on the shared-prefix saturation load) */
    p->w_prefix = 3.0;
    p->w_queue = 1.0;
    p->w_decode = 1.0;
    p->decode_tokens = 32.0;
    p->w_kv = 1.0;
    p->kv_high = 0.9;
    p->kv_tokens = 8192.0;
    p->w_lora = 1.0;
    p->lora_tokens = 2048.0;
    p->session_load_factor = 1.25;
    /* loading a 2 MiB block (16 tokens of Llama-3-8B) at ~10 GB/s takes
     * ~0.2 ms; prefilling 16 tokens of an 8B model (~0.26 TFLOP) ~1 ms on an
     * A100: the load is about a quarter of the recompute */
    p->kv_store_cost = 0.25;
    p->kv_store_all = false;
}

const brix_strategy_t *brix_strategy_find(const char *name)
{
    for (size_t i = 0; i < sizeof strategies / sizeof *strategies; i++)
        if (!strcmp(strategies[i]->name, name))
            return strategies[i];
    return NULL;
}

static char strategy_names[1024];

static void build_names(void)
{
    size_t pos = 0;
    for (size_t i = 0; i < sizeof strategies / sizeof *strategies; i++)
        pos += (size_t)snprintf(strategy_names + pos, sizeof strategy_names - pos, "%s%s",
                                i ? ", " : "", strategies[i]->name);
}

const char *brix_strategy_names(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT; /* workers may ask at once */
    pthread_once(&once, build_names);
    return strategy_names;
}

int brix_strategy_parse(const char *text, brix_strategy_sel_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    const char *p = text;
    size_t pos = 0;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *e = p;
        while (*e && *e != ',' && *e != ':')
            e++;
        char name[48];
        size_t nl = (size_t)(e - p);
        while (nl && p[nl - 1] == ' ')
            nl--;
        if (!nl || nl >= sizeof name) {
            snprintf(err, errlen, "incorrect routing strategy '%s'", text);
            return -1;
        }
        memcpy(name, p, nl);
        name[nl] = '\0';
        const brix_strategy_t *s = brix_strategy_find(name);
        if (!s) {
            snprintf(err, errlen, "incorrect routing strategy '%s' (known: %s)", name,
                     brix_strategy_names());
            return -1;
        }
        double w = 1;
        if (*e == ':') {
            char *end;
            long v = strtol(e + 1, &end, 10);
            while (*end == ' ')
                end++;
            if (end == e + 1 || v < 0 || v > 1000000 || (*end && *end != ',')) {
                snprintf(err, errlen, "routing strategy '%s': weight must be an integer 0..1000000",
                         name);
                return -1;
            }
            w = (double)v;
            e = end;
        }
        if (w > 0) {
            if (out->n == BRIX_MIX_MAX) {
                snprintf(err, errlen, "at most %d strategies in a mix", BRIX_MIX_MAX);
                return -1;
            }
            out->s[out->n] = s;
            out->w[out->n] = w;
            out->n++;
            if (w == 1)
                pos += (size_t)snprintf(out->name + pos, sizeof out->name - pos, "%s%s",
                                        pos ? "," : "", name);
            else
                pos += (size_t)snprintf(out->name + pos, sizeof out->name - pos, "%s%s:%g",
                                        pos ? "," : "", name, w);
            if (pos >= sizeof out->name)
                pos = sizeof out->name - 1;
        }
        p = *e == ',' ? e + 1 : e;
    }
    if (!out->n) {
        snprintf(err, errlen, "incorrect routing strategy '%s': nothing to route with", text);
        return -1;
    }
    /* a bounded label set: one value per strategy, plus "mix" */
    out->label = out->s[0]->name;
    for (size_t i = 1; i < out->n; i++)
        if (out->s[i] != out->s[0])
            out->label = "mix";
    return 0;
}

uint64_t brix_rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ------------------------------------------------------ shared data -- */

const brix_pod_view_t *brix_route_view(const brix_route_ctx_t *ctx, size_t i)
{
    return &ctx->snap->pods[ctx->cand[i]];
}

double brix_route_load(const brix_route_ctx_t *ctx, size_t i)
{
    const brix_pod_view_t *v = brix_route_view(ctx, i);
    /* The engine's running + waiting (all its clients) at the last scrape,
     * moved by what this gateway sent or finished since; never below this
     * gateway's own in-flight count. Adding in-flight to the scrape instead
     * would count every request of ours twice. */
    double inflight = (double)atomic_load_explicit(&v->pod->inflight, memory_order_relaxed);
    if (!v->metrics_fresh)
        return inflight;
    double est = v->stats.running + v->stats.waiting + inflight - v->inflight_at_scrape;
    return est > inflight ? est : inflight;
}

const brix_prompt_t *brix_route_prompt(brix_route_ctx_t *ctx)
{
    if (!ctx->prompt_done) {
        ctx->prompt_done = true;
        if (!ctx->fields || !ctx->arena || !ctx->params ||
            brix_prompt_hash(ctx->fields, ctx->model->name, (uint32_t)ctx->params->block_size,
                             (size_t)ctx->params->max_blocks, ctx->arena, &ctx->prompt))
            memset(&ctx->prompt, 0, sizeof ctx->prompt);
    }
    return &ctx->prompt;
}

static uint32_t *compute_match(brix_route_ctx_t *ctx, const brix_podset_t *precise)
{
    uint32_t *m = ctx->arena ? brix_arena_alloc(ctx->arena, ctx->ncand * sizeof *m + 1) : NULL;
    if (!m)
        return NULL;
    const brix_prompt_t *pr = brix_route_prompt(ctx);
    uint32_t *ids = brix_arena_alloc(ctx->arena, ctx->ncand * sizeof *ids + 1);
    if (!ids || !ctx->index || !pr->nhashes) {
        memset(m, 0, ctx->ncand * sizeof *m);
        return m;
    }
    for (size_t i = 0; i < ctx->ncand; i++)
        ids[i] = brix_route_view(ctx, i)->pod->id;
    brix_prefix_index_match(ctx->index, pr->hashes, pr->nhashes, ids, ctx->ncand, precise, m);
    return m;
}

const uint32_t *brix_route_match(brix_route_ctx_t *ctx)
{
    if (!ctx->match_done) {
        ctx->match_done = true;
        ctx->match = compute_match(ctx, ctx->precise);
    }
    return ctx->match;
}

const uint32_t *brix_route_match_approx(brix_route_ctx_t *ctx)
{
    if (!ctx->match_approx_done) {
        ctx->match_approx_done = true;
        ctx->match_approx = compute_match(ctx, NULL);
    }
    return ctx->match_approx;
}

bool brix_route_has_store(const brix_route_ctx_t *ctx)
{
    if (ctx->params && ctx->params->kv_store_all)
        return true;
    const brix_registry_t *r = ctx->snap ? ctx->snap->registry : NULL;
    if (!r || !ctx->model)
        return false;
    const char *base = ctx->model->parent ? ctx->model->parent : ctx->model->name;
    const brix_reg_deployment_t *d = brix_registry_deployment_for(r, base);
    return d && d->kv_store;
}

uint32_t brix_route_store_match(brix_route_ctx_t *ctx)
{
    if (!ctx->store_done) {
        ctx->store_done = true;
        ctx->store_match = 0;
        const brix_prompt_t *pr = brix_route_prompt(ctx);
        if (ctx->index && pr->nhashes && brix_route_has_store(ctx)) {
            uint32_t id = BRIX_PREFIX_STORE_POD;
            brix_prefix_index_match(ctx->index, pr->hashes, pr->nhashes, &id, 1, NULL,
                                    &ctx->store_match);
        }
    }
    return ctx->store_match;
}

double brix_route_hit_blocks(brix_route_ctx_t *ctx, const uint32_t *m, size_t i)
{
    double local = m ? (double)m[i] : 0;
    uint32_t s = brix_route_store_match(ctx);
    double cost = ctx->params ? ctx->params->kv_store_cost : 1;
    return (double)s > local ? local + ((double)s - local) * (1 - cost) : local;
}

static size_t pick_lowest(brix_route_ctx_t *ctx)
{
    size_t best = 0, ties = 0;
    for (size_t i = 0; i < ctx->ncand; i++) {
        if (i == 0 || ctx->score[i] < ctx->score[best]) {
            best = i;
            ties = 1;
        } else if (ctx->score[i] == ctx->score[best]) {
            /* reservoir sampling over equal scores: uniform among ties */
            ties++;
            if (brix_rng_next(ctx->rng) % ties == 0)
                best = i;
        }
    }
    return best;
}

size_t brix_route_least_loaded(brix_route_ctx_t *ctx)
{
    /* uses the score array, keeping the strategy's scores for explanations */
    double *keep = ctx->arena ? brix_arena_alloc(ctx->arena, ctx->ncand * sizeof *keep + 1) : NULL;
    if (keep)
        memcpy(keep, ctx->score, ctx->ncand * sizeof *keep);
    for (size_t i = 0; i < ctx->ncand; i++)
        ctx->score[i] = brix_route_load(ctx, i);
    size_t k = pick_lowest(ctx);
    if (keep)
        memcpy(ctx->score, keep, ctx->ncand * sizeof *keep);
    return k;
}

void brix_route_commit(brix_route_ctx_t *ctx, uint32_t pod_index)
{
    if (!ctx->prompt_done || !ctx->index || !ctx->prompt.nhashes)
        return;
    brix_pod_t *pod = ctx->snap->pods[pod_index].pod;
    brix_prefix_index_add(ctx->index, BRIX_PREFIX_ROUTED, ctx->prompt.hashes, ctx->prompt.nhashes,
                          pod->id);
    atomic_fetch_add_explicit(&pod->routed_blocks, (long long)ctx->prompt.nhashes,
                              memory_order_relaxed);
    /* the engine saves the prompt's full blocks to the shared store after
     * its prefill: every pod of the fleet can load them from now on */
    if (brix_route_has_store(ctx))
        brix_prefix_index_add(ctx->index, BRIX_PREFIX_ROUTED, ctx->prompt.hashes,
                              ctx->prompt.nhashes, BRIX_PREFIX_STORE_POD);
}

/* --------------------------------------------------------- choosing -- */

static bool excluded(const brix_route_ctx_t *ctx, uint32_t idx)
{
    for (size_t i = 0; i < ctx->nexclude; i++)
        if (ctx->exclude[i] == idx)
            return true;
    return false;
}

/* A weighted mix: each strategy's scores normalised to 0..1 over the
 * candidates (0 best), then summed with the weights. */
static void score_mix(brix_route_ctx_t *ctx, const brix_strategy_sel_t *sel)
{
    size_t n = ctx->ncand;
    double *sum = brix_arena_alloc(ctx->arena, n * sizeof *sum + 1);
    if (!sum)
        return;
    memset(sum, 0, n * sizeof *sum);
    for (size_t k = 0; k < sel->n; k++) {
        for (size_t i = 0; i < n; i++)
            ctx->score[i] = 0;
        if (sel->s[k]->score)
            sel->s[k]->score(ctx);
        double lo = INFINITY, hi = -INFINITY;
        for (size_t i = 0; i < n; i++) {
            lo = ctx->score[i] < lo ? ctx->score[i] : lo;
            hi = ctx->score[i] > hi ? ctx->score[i] : hi;
        }
        for (size_t i = 0; i < n; i++)
            sum[i] += sel->w[k] * (hi > lo ? (ctx->score[i] - lo) / (hi - lo) : 0);
    }
    memcpy(ctx->score, sum, n * sizeof *sum);
}

static void explain(brix_route_ctx_t *ctx, const brix_strategy_sel_t *sel, size_t k)
{
    brix_buf_t *b = ctx->explain;
    brix_buf_printf(b, "strategy=%s; chosen=%s; reason=%s; candidates=", sel->name,
                    brix_route_view(ctx, k)->pod->name, ctx->reason ? ctx->reason : "lowest score");
    const uint32_t *m = ctx->match_done          ? ctx->match
                        : ctx->match_approx_done ? ctx->match_approx
                                                 : NULL;
    for (size_t i = 0; i < ctx->ncand && i < 32; i++) {
        const brix_pod_view_t *v = brix_route_view(ctx, i);
        brix_buf_printf(b, "%s%s(score=%.4g load=%.0f", i ? "," : "", v->pod->name, ctx->score[i],
                        brix_route_load(ctx, i));
        if (m)
            brix_buf_printf(b, " match=%u/%zu", m[i], ctx->prompt.nhashes);
        brix_buf_append_char(b, ')');
    }
    if (ctx->store_done && brix_route_has_store(ctx))
        brix_buf_printf(b, "; kv-store=%u/%zu", ctx->store_match, ctx->prompt.nhashes);
}

brix_route_rc_t brix_route(brix_route_ctx_t *ctx, const brix_strategy_sel_t *sel,
                           uint32_t *pod_index, bool *probe)
{
    *probe = false;
    ctx->ncand = 0;
    ctx->match_done = ctx->match_approx_done = false;
    ctx->reason = NULL;
    for (size_t i = 0; i < ctx->model->npods; i++) {
        uint32_t idx = ctx->model->pods[i];
        const brix_pod_view_t *v = &ctx->snap->pods[idx];
        if (!v->healthy || excluded(ctx, idx))
            continue;
        brix_pod_t *p = v->pod;
        brix_breaker_state_t st = brix_breaker_state(p, ctx->now_ns);
        if (st == BRIX_BREAKER_OPEN ||
            (st == BRIX_BREAKER_HALF_OPEN && atomic_load(&p->probe_in_flight)))
            continue;
        ctx->cand[ctx->ncand] = idx;
        ctx->score[ctx->ncand] = 0;
        ctx->ncand++;
    }
    bool single = sel->n == 1;
    if (ctx->ncand == 1 && !ctx->explain && !(single && sel->s[0]->pick_single)) {
        /* one candidate and nobody asking why: nothing to weigh (and no
         * prompt to hash: a one-pod model pays no routing cost) */
        ctx->reason = "the only candidate";
        if (brix_breaker_allow(ctx->snap->pods[ctx->cand[0]].pod, ctx->now_ns, probe)) {
            *pod_index = ctx->cand[0];
            return BRIX_ROUTE_OK;
        }
        return BRIX_ROUTE_NO_POD;
    }
    if (ctx->ncand) {
        if (single && sel->s[0]->score)
            sel->s[0]->score(ctx);
        else if (!single)
            score_mix(ctx, sel);
    }
    while (ctx->ncand) {
        size_t k = single && sel->s[0]->pick ? sel->s[0]->pick(ctx) : pick_lowest(ctx);
        uint32_t idx = ctx->cand[k];
        if (brix_breaker_allow(ctx->snap->pods[idx].pod, ctx->now_ns, probe)) {
            if (ctx->explain)
                explain(ctx, sel, k);
            *pod_index = idx;
            return BRIX_ROUTE_OK;
        }
        /* Lost a half-open pod's single probe to another worker: drop it
         * and pick again among the rest. */
        ctx->ncand--;
        ctx->cand[k] = ctx->cand[ctx->ncand];
        ctx->score[k] = ctx->score[ctx->ncand];
        if (ctx->match_done && ctx->match)
            ctx->match[k] = ctx->match[ctx->ncand];
        if (ctx->match_approx_done && ctx->match_approx)
            ctx->match_approx[k] = ctx->match_approx[ctx->ncand];
    }
    return BRIX_ROUTE_NO_POD;
}
