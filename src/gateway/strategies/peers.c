/*
 * Baselines reimplemented from the published descriptions of two peers
 * (shared/reference/routing-peers.md), so benchmarks can compare them with
 * brix's strategies on the same gateway, fleet and workload. Differences
 * forced by brix's design are noted.
 *
 * sglang-cache-aware (SGLang model gateway, cache_aware): if loads are
 * imbalanced — max − min > 64 and max > 1.5 × min — the least loaded wins;
 * otherwise the pod with the longest prefix match if the match rate exceeds
 * 0.3, else the pod whose routed history is smallest (SGLang: the smallest
 * radix tree, i.e. the most free cache). SGLang matches characters in a
 * radix tree; here, the gateway's token-block index (same idea, block
 * granularity). Load = requests in flight from the gateway.
 *
 * gie-default (Gateway API Inference Extension endpoint picker, default
 * profile): pods with queue > 5 or KV usage > 0.8 are filtered out unless
 * all are; then scorers in 0..1 — queue depth (weight 2), KV utilisation
 * (2), prefix match fraction (3) — and the highest total wins. GIE hashes
 * 64-character blocks of the prompt; here, the gateway's token blocks.
 */
#include "gateway/router.h"

#include <math.h>

static size_t pick_sglang(brix_route_ctx_t *ctx)
{
    size_t n = ctx->ncand, lo_i = 0;
    double lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        double l = (double)atomic_load_explicit(&brix_route_view(ctx, i)->pod->inflight,
                                                memory_order_relaxed);
        if (l < lo) {
            lo = l;
            lo_i = i;
        }
        hi = l > hi ? l : hi;
    }
    if (hi - lo > 64 && hi > 1.5 * lo) {
        ctx->reason = "imbalanced: least loaded";
        return lo_i;
    }
    const uint32_t *m = brix_route_match_approx(ctx); /* SGLang only knows what it routed */
    const brix_prompt_t *p = brix_route_prompt(ctx);
    size_t best = 0;
    for (size_t i = 1; m && i < n; i++)
        if (m[i] > m[best])
            best = i;
    if (m && p->nhashes && (double)m[best] / (double)p->nhashes > 0.3) {
        ctx->reason = "longest prefix match above 30%";
        return best;
    }
    /* the smallest history: fewest blocks routed there */
    size_t small = 0;
    long long smallest = -1;
    for (size_t i = 0; i < n; i++) {
        long long b = atomic_load_explicit(&brix_route_view(ctx, i)->pod->routed_blocks,
                                           memory_order_relaxed);
        if (smallest < 0 || b < smallest) {
            smallest = b;
            small = i;
        }
    }
    ctx->reason = "match below 30%: smallest routed history";
    return small;
}

static void score_sglang(brix_route_ctx_t *ctx)
{
    /* in mixes: the match fraction, as prefix-cache */
    const uint32_t *m = brix_route_match_approx(ctx);
    const brix_prompt_t *p = brix_route_prompt(ctx);
    for (size_t i = 0; i < ctx->ncand; i++)
        ctx->score[i] = m && p->nhashes ? 1.0 - (double)m[i] / (double)p->nhashes : 1.0;
}

static void score_gie(brix_route_ctx_t *ctx)
{
    size_t n = ctx->ncand;
    bool all_saturated = true;
    double max_q = 0;
    for (size_t i = 0; i < n; i++) {
        const brix_pod_view_t *v = brix_route_view(ctx, i);
        if (!(v->metrics_fresh && (v->stats.waiting > 5 || v->stats.kv_usage > 0.8)))
            all_saturated = false;
        if (v->metrics_fresh && v->stats.waiting > max_q)
            max_q = v->stats.waiting;
    }
    /* GIE's prefix scorer uses its own routing history */
    const uint32_t *m = brix_route_match_approx(ctx);
    const brix_prompt_t *p = brix_route_prompt(ctx);
    for (size_t i = 0; i < n; i++) {
        const brix_pod_view_t *v = brix_route_view(ctx, i);
        bool saturated = v->metrics_fresh && (v->stats.waiting > 5 || v->stats.kv_usage > 0.8);
        double q = v->metrics_fresh ? v->stats.waiting : max_q;
        double qs = max_q > 0 ? 1.0 - q / max_q : 1.0;
        double kvs = 1.0 - (v->metrics_fresh ? v->stats.kv_usage : 1.0);
        double ps = m && p->nhashes ? (double)m[i] / (double)p->nhashes : 0;
        double total = 2 * qs + 2 * kvs + 3 * ps;
        /* lower is better here: negate; filtered pods sort after all others */
        ctx->score[i] = -total + (saturated && !all_saturated ? 100 : 0);
    }
    ctx->reason = "GIE default scorers: queue 2, KV 2, prefix 3";
}

const brix_strategy_t brix_strategy_sglang_cache_aware = {
    .name = "sglang-cache-aware",
    .score = score_sglang,
    .pick = pick_sglang,
    .about = "baseline: SGLang's cache_aware policy, reimplemented from its description",
};
const brix_strategy_t brix_strategy_gie_default = {
    .name = "gie-default",
    .score = score_gie,
    .about = "baseline: the Gateway API Inference Extension's default scorers, reimplemented",
};
